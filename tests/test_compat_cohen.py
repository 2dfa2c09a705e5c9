"""Drop-in both ways with Cohen et al.'s codebase: their certify.py flow through
compat.Smooth with a BatchNorm model, their Smooth helpers, and their log format read back
by read_log, certified_accuracy and `dualrs plot`."""
import datetime
from time import time

import numpy as np
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

import dualrs_fast as drs
from dualrs_fast import cli
from dualrs_fast.compat import Smooth
from dualrs_fast.logs import certified_accuracy, read_log, seconds
from dualrs_fast.plotting import default_labels

from analytic import inputs_at_distances


def batchnorm_model() -> torch.nn.Module:
    """A small conv net with BatchNorm, as all of Cohen's architectures have, left in
    training mode with non-trivial running statistics (as certify.py leaves a loaded model)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8))  # running statistics away from their init
    assert model.training
    return model


def cohens_certify_py(smoothed_classifier, dataset, outfile, n0=20, n=200, alpha=0.001,
                      batch=100):
    """The loop of Cohen et al.'s code/certify.py, call for call (written from its
    description, not copied): header, one certify per input, timedelta time column."""
    f = open(outfile, "w")
    print("idx\tlabel\tpredict\tradius\tcorrect\ttime", file=f, flush=True)
    for i in range(len(dataset)):
        (x, label) = dataset[i]
        before_time = time()
        prediction, radius = smoothed_classifier.certify(x, n0, n, alpha, batch)
        after_time = time()
        correct = int(prediction == label)
        time_elapsed = str(datetime.timedelta(seconds=(after_time - before_time)))
        print("{}\t{}\t{}\t{:.3}\t{}\t{}".format(i, label, prediction, radius, correct,
                                                 time_elapsed), file=f, flush=True)
    f.close()


def test_cohens_certify_flow_with_a_batchnorm_model(tmp_path, capsys):
    model = batchnorm_model()
    g = torch.Generator().manual_seed(1)
    dataset = [(torch.rand(1, 8, 8, generator=g), k % 3) for k in range(4)]
    log = tmp_path / "cohen_sigma0.25.tsv"
    cohens_certify_py(Smooth(model, 3, 0.25), dataset, log)
    assert not model.training  # certify put it in eval mode, as Cohen's does
    assert "\t0:00:0" in log.read_text().splitlines()[1]  # Cohen's time format
    table = read_log(log)
    assert table["idx"].tolist() == [0, 1, 2, 3] and table["time"].dtype == np.float64
    assert 0.0 <= certified_accuracy(log, [0.0])[0] <= 1.0
    assert cli.main(["plot", str(log), "--out", str(tmp_path / "acc.png")]) == 0
    assert "cohen_sigma0.25.tsv" in capsys.readouterr().out


def test_smooth_in_train_mode_certifies_as_the_model_in_eval_mode():
    model = batchnorm_model()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2))
    got = Smooth(model, 3, 0.5, seed=3).certify(x, 20, 300, 0.01, 128)
    r = drs.certify(model.eval(), x, sigma=0.5, n0=20, n=300, alpha=0.01, seed=3)
    assert got == (int(r.prediction[0]), float(r.radius[0]))
    model.train()
    assert Smooth(model, 3, 0.5, seed=3).predict(x, 300, 0.01, 128) == int(
        drs.predict(model.eval(), x, sigma=0.5, n=300, alpha=0.01, seed=3)[0])


def test_cohens_helpers_have_cohens_signatures_and_results(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.0]), (1, 28, 28))[0]  # on the boundary
    smooth = Smooth(linear_model, num_classes=2, sigma=0.25, seed=7)
    first = smooth._sample_noise(x, 400, 128)
    second = smooth._sample_noise(x, 400, 128)
    assert isinstance(first, np.ndarray) and first.shape == (2,) and first.sum() == 400
    assert np.issubdtype(first.dtype, np.integer)
    assert not np.array_equal(first, second)  # each call draws new noise, even with a seed
    again = Smooth(linear_model, num_classes=2, sigma=0.25, seed=7)
    assert np.array_equal(again._sample_noise(x, 400, 128), first)  # reproducible
    # without a seed the noise is a fresh secret from the OS, not torch's global RNG (which a
    # model could know): torch.manual_seed does not replay it (issue 10)
    draws = []
    for _ in range(3):
        torch.manual_seed(5)
        draws.append(Smooth(linear_model, 2, 0.25)._sample_noise(x, 4000, 1000))
    assert not all(np.array_equal(d, draws[0]) for d in draws[1:])

    assert smooth._count_arr(np.array([0, 2, 2, 3]), 4).tolist() == [1, 0, 2, 1]
    with pytest.raises(ValueError, match="integers in"):
        smooth._count_arr(np.array([0, 4]), 4)

    for na, n, alpha in ((90, 100, 0.001), (1000, 1000, 0.01), (0, 10, 0.05), (517, 1000, 0.001)):
        ours = smooth._lower_confidence_bound(na, n, alpha)
        cohens = proportion_confint(na, n, alpha=2 * alpha, method="beta")[0]
        assert isinstance(ours, float) and ours == pytest.approx(cohens, rel=1e-9, abs=1e-12)


def test_cohens_certify_from_its_helpers_is_sound_at_a_known_distance(linear_model):
    """Cohen's certify written with the helpers: selection and estimation calls must be
    independent draws, and the radius a lower bound of the true distance."""
    x = inputs_at_distances(linear_model, torch.tensor([0.3]), (1, 28, 28))[0]
    smooth = Smooth(linear_model, num_classes=2, sigma=0.25, seed=11)
    top = smooth._sample_noise(x, 50, 64).argmax()
    p_lower = smooth._lower_confidence_bound(smooth._sample_noise(x, 2000, 512)[top], 2000, 0.001)
    radius = 0.25 * float(torch.distributions.Normal(0, 1).icdf(torch.tensor(p_lower)))
    assert top == 1 and 0 < radius <= 0.3


def test_read_log_reads_cohens_time_column(tmp_path):
    assert seconds("0:00:06.125100") == pytest.approx(6.1251)
    assert seconds("1:02:03") == 3723.0
    assert seconds("2 days, 0:00:01.5") == pytest.approx(2 * 86400 + 1.5)
    assert seconds("0.462620") == pytest.approx(0.46262)
    path = tmp_path / "cohen.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                    "0\t3\t3\t0.835\t1\t0:00:06.125100\n"
                    "1\t5\t-1\t0.0\t0\t1 day, 0:00:00.5\n")
    table = read_log(path)
    np.testing.assert_allclose(table["time"], [6.1251, 86400.5])
    assert certified_accuracy(table, [0.0, 0.8, 0.9]).tolist() == [0.5, 0.5, 0.0]
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.8\t1\tsoon\n")
    with pytest.raises(ValueError, match="column time holds 'soon'"):
        read_log(path)


def test_plot_labels_are_distinct_by_default(tmp_path):
    a, b = tmp_path / "a" / "run.tsv", tmp_path / "b" / "run.tsv"
    c, d = tmp_path / "s05_first.tsv", tmp_path / "s05_second.tsv"
    for path in (a, b, c, d):
        path.parent.mkdir(exist_ok=True)
        path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    for path in (c, d):  # the same recorded sigma: default_label gives both 'σ = 0.5'
        (tmp_path / (path.name + ".args.json")).write_text('{"config": {"sigma": 0.5}}')
    labels = default_labels([c, d, a, b])
    assert labels[:2] == ["σ = 0.5 (s05_first)", "σ = 0.5 (s05_second)"]
    assert labels[2:] == [str(a), str(b)]  # same file name and stem: the paths
