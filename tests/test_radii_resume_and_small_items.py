"""Issue 20, items 5 and 6.

5. A resumed ``--radii`` log was not checked row by row: a forged row (label 7, predict 3,
   radius 1e6, correct 1) with a recomputed seal was kept and counted. Every row type the
   command line resumes is now checked (plain and Dual RS, with and without --radii).
6. Radii are written rounded down (``'%.9g'`` wrote 2/3 as 0.666666667); uint8 / uint32 /
   uint64 ids are accepted; a string sigma in a checkpoint is a one-line error; ``plot``
   refuses correct = 1 with predict != label, and fullwidth digits.
"""
import json
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast.log_seal import Seal
from dualrs_fast.logs import format_radius, format_row, read_log
from dualrs_fast.models import TinyMLP, save_checkpoint

from analytic import LinearBinary
from cli_helpers import dualrs, make_toy
from test_resume_forgery import edit_row

GRID = "0.1,0.2,0.6666666666666666"   # 2/3: '%.9g' rounds it up


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """--radii logs, plain and Dual RS, to forge copies of: {kind: (argv, log)}."""
    root = tmp_path_factory.mktemp("radii")
    make_toy(root, inputs=6)
    torch.manual_seed(1)
    save_checkpoint(root / "est.pt", TinyMLP((1, 8, 8), num_classes=2, hidden=8), "tiny_mlp")
    common = ["certify", "--dataset", root / "toy.pt", "--n0", 10, "--n", 300, "--alpha", 0.01,
              "--seed", 0, "--quiet"]
    kinds = {
        "plain": ["--model", root / "mlp.pt"],
        "radii": ["--model", root / "mlp.pt", "--radii", GRID],
        "dual": ["--dual", "--sigmas", 0.25, 0.5, "--estimator-sigma", 0.5, "--estimator",
                 root / "est.pt", "--model", root / "mlp.pt", root / "mlp.pt"],
    }
    kinds["dual-radii"] = kinds["dual"] + ["--radii", GRID]
    out = {}
    for kind, extra in kinds.items():
        argv = [str(a) for a in common + extra]
        log = root / f"{kind}.tsv"
        code, _, err = dualrs(_NoCapture(), *argv, "--out", log)
        assert code == 0, err
        out[kind] = (argv, log)
    return out


class _NoCapture:
    """capsys stand-in for the module fixture (output is not looked at)."""

    def readouterr(self):
        return "", ""


def _copy(made, kind, tmp_path):
    argv, log = made[kind]
    copy = tmp_path / "log.tsv"
    shutil.copy(log, copy)
    shutil.copy(str(log) + ".args.json", str(copy) + ".args.json")
    return argv, copy


def _reseal(log):
    """What a forger who can write both files does: recompute the seal."""
    sidecar = log.with_name(log.name + ".args.json")
    recorded = json.loads(sidecar.read_text())
    recorded["seal"] = Seal(recorded["config"]).update(log.read_bytes()).record()
    sidecar.write_text(json.dumps(recorded))


def _forge(log, line_no, **cells):
    edit_row(log, line_no, **cells)
    _reseal(log)


def _refused(code, err, *fragments):
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("kind", ["plain", "radii", "dual", "dual-radii"])
def test_the_issues_forged_row_is_refused_in_every_log_type(made, kind, tmp_path, capsys):
    argv, log = _copy(made, kind, tmp_path)
    code, _, err = dualrs(capsys, *argv, "--out", log)   # untouched: resumes
    assert code == 0, err
    _forge(log, 2, label="7", predict="3", radius="1000000", correct="1")
    code, out, err = dualrs(capsys, *argv, "--out", log)
    _refused(code, err, "line 2:")
    assert "certified accuracy" not in out


@pytest.mark.parametrize("kind", ["radii", "dual-radii"])
@pytest.mark.parametrize("cells, expected", [
    ({"radius": "0.15"}, "is not a radius of the grid"),        # below n's limit, off the grid
    ({"radius": "0.666666667"}, "is not a radius of the grid"),  # 2/3 rounded up
    ({"samples": "99999"}, "samples 99999 is not in"),
    ({"samples": "-1"}, "samples -1 is not in"),
])
def test_radii_rows_hold_grid_radii_and_possible_sample_counts(made, kind, cells, expected,
                                                               tmp_path, capsys):
    argv, log = _copy(made, kind, tmp_path)
    lines = log.read_text().splitlines()
    line = next(k for k, row in enumerate(lines[1:], 2) if row.split("\t")[2] != "-1")
    if "radius" in cells and kind == "dual-radii":
        cells = dict(cells, radius_estimator=cells["radius"], radius_classifier=cells["radius"])
    _forge(log, line, **cells)
    code, _, err = dualrs(capsys, *argv, "--out", log)
    _refused(code, err, f"line {line}:", expected)


def test_radii_logs_state_grid_radii_rounded_down(made):
    for kind in ("radii", "dual-radii"):
        table = read_log(made[kind][1])
        for column in ("radius", "radius_estimator", "radius_classifier"):
            values = set(table.get(column, np.array([])).tolist()) - {-1.0, 0.0}
            assert values <= {0.1, 0.2, 0.666666666}, (kind, column, values)


@pytest.mark.parametrize("radius", [2 / 3, 0.1, 1 / 3, 1.0000000049, 0.99999999951, 1e-12,
                                    123456.7895, 0.0, 5e-324])
def test_format_radius_rounds_down_to_nine_digits(radius):
    text = format_radius(radius)
    assert Fraction(float(text)) <= Fraction(radius)          # never above the certificate
    assert len(text.replace("-", "").replace(".", "").split("e")[0].lstrip("0")) <= 9
    assert float(text) >= radius * (1 - 1e-8)                  # and 9 digits close
    assert f"{2 / 3:.9g}" == "0.666666667" and format_radius(2 / 3) == "0.666666666"


def test_every_radius_column_of_a_row_is_rounded_down():
    row = format_row(1, 0, 0, 2 / 3, 0.5, sigma=2 / 3, radius_estimator=2 / 3,
                     radius_classifier=2 / 3, samples=10)
    cells = row.split("\t")
    assert cells[3] == cells[7] == cells[8] == "0.666666666" and cells[6] == "0.666666667"


# --------------------------------------------------------------------------- item 6

@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.uint64,
                                   torch.int16, np.uint8, np.uint64])
def test_unsigned_and_small_integer_ids_are_accepted(dtype):
    model = LinearBinary.random(4, 0)
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    ids = (np.array([3, 250], dtype=dtype) if isinstance(dtype, type)
           else torch.tensor([3, 250], dtype=dtype))
    r = drs.certify(model, x, sigma=0.5, n0=5, n=50, seed=0, ids=ids)
    want = drs.certify(model, x, sigma=0.5, n0=5, n=50, seed=0, ids=[3, 250])
    assert torch.equal(r.count, want.count)


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([2**32, 1], dtype=torch.uint64), r"\[0, 2\*\*32\)"),
    (torch.tensor([2**63 + 5, 1], dtype=torch.uint64), r"\[0, 2\*\*32\)"),
    (torch.tensor([-1, 1]), r"\[0, 2\*\*32\)"),
    (torch.tensor([7, 7], dtype=torch.uint8), "distinct"),
])
def test_ids_out_of_range_or_repeated_are_refused(ids, message):
    with pytest.raises(ValueError, match=message):
        drs.certify(LinearBinary.random(4, 0), torch.rand(2, 4), sigma=0.5, n0=5, n=20, seed=0,
                    ids=ids)


@pytest.mark.parametrize("sigma", ["0.5", [0.5], -1.0, float("nan"), True])
def test_a_bad_sigma_in_checkpoint_metadata_is_a_one_line_error(sigma, tmp_path, capsys):
    make_toy(tmp_path, inputs=2)
    torch.manual_seed(0)
    model = TinyMLP(in_shape=(1, 8, 8), num_classes=4, hidden=8).eval()
    save_checkpoint(tmp_path / "m.pt", model, "tiny_mlp", meta={"sigma": sigma})
    code, _, err = dualrs(capsys, "certify", "--dataset", tmp_path / "toy.pt", "--model",
                          tmp_path / "m.pt", "--n0", 5, "--n", 20, "--seed", 0, "--quiet")
    _refused(code, err, "is not a positive number", "--sigma")


@pytest.mark.parametrize("cells, expected", [
    ({"correct": "1", "predict": "X"}, "correct 1 but label"),   # X: a class other than label
    ({"idx": "\uff13"}, "not a number"),                        # fullwidth '3'
    ({"radius": "\uff10.5"}, "not a number"),                   # fullwidth '0'
])
def test_plot_refuses_contradictory_and_non_ascii_rows(made, cells, expected, tmp_path,
                                                       capsys):
    _, log = _copy(made, "plain", tmp_path)
    label = log.read_text().splitlines()[1].split("\t")[1]
    edit_row(log, 2, **{k: (str((int(label) + 1) % 4) if v == "X" else v)
                        for k, v in cells.items()})
    code, _, err = dualrs(capsys, "plot", log, "--out", tmp_path / "p.png")
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "p.png").exists()
