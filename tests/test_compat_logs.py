"""Cohen-compatible Smooth and Cohen-format logs."""
import numpy as np
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast.compat import Smooth
from dualrs_fast.logs import LogWriter, certified_accuracy, read_log

from analytic import inputs_at_distances


def test_smooth_has_cohens_interface(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.5]), (1, 28, 28))[0]
    smooth = Smooth(linear_model, num_classes=2, sigma=0.25)
    assert Smooth.ABSTAIN == -1
    cls, radius = smooth.certify(x, n0=50, n=1000, alpha=0.001, batch_size=256)
    assert isinstance(cls, int) and isinstance(radius, float)
    assert cls == 1 and 0 < radius <= 0.5
    assert smooth.predict(x, n=500, alpha=0.001, batch_size=256) == 1


def test_smooth_with_fixed_seed_equals_certify(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.2]), (1, 28, 28))[0]
    cls, radius = Smooth(linear_model, 2, 0.25, seed=4).certify(x, 20, 500, 0.01, 100)
    r = drs.certify(linear_model, x, sigma=0.25, n0=20, n=500, alpha=0.01, seed=4)
    assert (cls, radius) == (int(r.prediction[0]), float(r.radius[0]))


def test_smooth_with_a_seed_is_reproducible(linear_model):
    # without one, each call draws a fresh secret seed (test_default_seed.py)
    x = inputs_at_distances(linear_model, torch.tensor([0.05]), (1, 28, 28))[0]
    smooth = Smooth(linear_model, 2, 0.25, seed=11)
    a = smooth.certify(x, 20, 2000, 0.01, 500)
    b = smooth.certify(x, 20, 2000, 0.01, 500)  # the next call draws new noise (issue 21)
    again = Smooth(linear_model, 2, 0.25, seed=11)
    assert a != b and again.certify(x, 20, 2000, 0.01, 500) == a
    assert again.certify(x, 20, 2000, 0.01, 500) == b


def test_smooth_abstains_at_the_boundary(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.0]), (1, 28, 28))[0]
    cls, radius = Smooth(linear_model, 2, 0.25, seed=0).certify(x, 20, 200, 0.001, 100)
    assert (cls, radius) == (Smooth.ABSTAIN, 0.0)


def test_smooth_checks_num_classes_and_shape(linear_model):
    x = torch.rand(1, 28, 28)
    with pytest.raises(ValueError, match="classes"):  # wider is fine (test_compat_subclass)
        Smooth(linear_model, num_classes=1, sigma=0.25).certify(x, 10, 100, 0.01, 50)
    with pytest.raises(ValueError):
        Smooth(linear_model, 2, 0.25).certify(torch.stack([x, x]), 10, 100, 0.01, 50)
    with pytest.raises(ValueError):
        Smooth(linear_model, 2, sigma=0.0)


def test_log_roundtrip_and_certified_accuracy(tmp_path):
    path = tmp_path / "log.tsv"
    rows = [(0, 3, 3, 0.75, 1.5), (1, 2, 2, 0.1234567, 0.2), (2, 5, 1, 0.9, 0.3),
            (3, 7, -1, 0.0, 0.1)]
    with LogWriter(path) as log:
        for r in rows:
            log.write(*r)
    text = path.read_text().splitlines()
    assert text[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert text[1].split("\t") == ["0", "3", "3", "0.75", "1", "1.500000"]
    table = read_log(path)
    assert table["correct"].tolist() == [1, 1, 0, 0]
    np.testing.assert_array_equal(table["radius"], [0.75, 0.1234567, 0.9, 0.0])
    acc = certified_accuracy(path, [0.0, 0.1, 0.5, 0.75, 0.8])
    np.testing.assert_array_equal(acc, [0.5, 0.5, 0.25, 0.25, 0.0])


def test_log_float32_radius_round_trips_exactly(tmp_path):
    r = np.float32(0.3) + np.float32(1e-8)
    with LogWriter(tmp_path / "l.tsv") as log:
        log.write(0, 1, 1, float(r), 0.0)
    assert np.float32(read_log(tmp_path / "l.tsv")["radius"][0]) == r


def test_log_with_extra_columns_and_bad_header(tmp_path):
    with LogWriter(tmp_path / "d.tsv", extra_columns=("sigma",)) as log:
        log.write(0, 1, 1, 0.5, 0.1, sigma=0.25)
        with pytest.raises(ValueError):
            log.write(1, 1, 1, 0.5, 0.1)
    assert read_log(tmp_path / "d.tsv")["sigma"].tolist() == [0.25]
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="header"):
        read_log(tmp_path / "bad.tsv")
