"""A resumed log is checked row by row and against the seal in LOG.args.json: each forgery
of issue 10 (and a few more) ends in a one-line error naming the line, exit code 2, and is
never reported as a certificate. Plots and summaries refuse nan / inf radii."""
import json
import shutil

import numpy as np
import pytest
import torch

from dualrs_fast import cli
from dualrs_fast.log_seal import Seal
from dualrs_fast.logs import certified_accuracy
from dualrs_fast.models import TinyMLP, save_checkpoint

from cli_helpers import dualrs, make_toy


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A complete 8-row certification log (and its arguments) to forge copies of."""
    root = tmp_path_factory.mktemp("forgery")
    make_toy(root, inputs=8)
    argv = ["certify", "--dataset", root / "toy.pt", "--model", root / "mlp.pt", "--n0", 10,
            "--n", 100, "--quiet"]
    for name, alpha, seed in (("good", 0.01, 0), ("loose", 0.5, 0), ("other", 0.01, 1)):
        assert cli.main([str(a) for a in argv + ["--alpha", alpha, "--seed", seed,
                                                 "--out", root / f"{name}.tsv"]]) == 0
    return root, argv + ["--seed", 0]


def copy_log(made, tmp_path, name="good"):
    root, _ = made
    log = tmp_path / "log.tsv"
    shutil.copy(root / f"{name}.tsv", log)
    shutil.copy(root / f"{name}.tsv.args.json", tmp_path / "log.tsv.args.json")
    return log


def resume(made, capsys, log, alpha=0.01):
    _, argv = made
    return dualrs(capsys, *argv, "--alpha", alpha, "--out", log)


def edit_row(log, line_no, **cells):
    lines = log.read_text().splitlines()
    columns = lines[0].split("\t")
    row = lines[line_no - 1].split("\t")
    for name, value in cells.items():
        row[columns.index(name)] = value
    lines[line_no - 1] = "\t".join(row)
    log.write_text("\n".join(lines) + "\n")
    return lines[line_no - 1]


def assert_refused(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("dualrs certify: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def a_certified_line(log):
    """Line number of a row that predicts its label (correct 1)."""
    lines = log.read_text().splitlines()
    return next(k for k, line in enumerate(lines[1:], start=2) if line.split("\t")[4] == "1")


@pytest.mark.parametrize("forgery, expected", [
    ({"radius": "99.0"}, "radius 99 exceeds"),
    ({"radius": "inf"}, "radius 'inf' is not a finite number"),
    ({"radius": "nan"}, "radius 'nan' is not a finite number"),
    ({"radius": "-0.5"}, "radius '-0.5' is not a finite number"),
    ({"predict": "99", "correct": "0"}, "predict 99 is neither -1"),
    ({"correct": "0"}, "correct 0 contradicts"),
    ({"idx": "\uff13"}, "non-ASCII characters"),        # fullwidth '3': isdigit() is True
    ({"idx": "03"}, "malformed row"),
    ({"idx": "7", "label": "x"}, "label 'x' is not an integer"),
])
def test_forged_rows_are_refused_with_their_line(made, tmp_path, capsys, forgery, expected):
    log = copy_log(made, tmp_path)
    before = log.read_text()
    line = a_certified_line(log)
    edit_row(log, line, **forgery)
    code, out, err = resume(made, capsys, log)
    assert_refused(code, err, f"line {line}:", expected)
    assert "certified accuracy" not in out


def test_a_row_with_another_label_is_refused(made, tmp_path, capsys):
    log = copy_log(made, tmp_path)
    line = a_certified_line(log)
    other = str((int(log.read_text().splitlines()[line - 1].split("\t")[1]) + 1) % 4)
    edit_row(log, line, label=other, predict=other)  # "correct" under the forged label
    code, _, err = resume(made, capsys, log)
    assert_refused(code, err, f"line {line}:", "the dataset's label of idx")


@pytest.mark.parametrize("extra, expected", [
    ("15\tfoo\tbar\tbaz\tqux\t0.1", "line 10: idx 15 is not among"),
    ("15 foo bar baz qux", "line 10: malformed row"),
    ("3\t{label}\t{label}\t0.1\t1\t0.5", "line 10: a second row for idx 3"),
    ("8\t0\t0\t0.1\t1\t0.5", "line 10: idx 8 is not among"),
])
def test_appended_rows_are_refused(made, tmp_path, capsys, extra, expected):
    log = copy_log(made, tmp_path)
    label = log.read_text().splitlines()[4].split("\t")[1]
    with open(log, "a") as f:
        f.write(extra.format(label=label) + "\n")
    code, _, err = resume(made, capsys, log)
    assert_refused(code, err, expected)


def test_exact_duplicate_row_is_refused(made, tmp_path, capsys):
    log = copy_log(made, tmp_path)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:5] + [lines[4]] + lines[5:]) + "\n")  # 9 rows for 8 inputs
    code, _, err = resume(made, capsys, log)
    assert_refused(code, err, "line 6: a second row for idx 3")


def test_edited_or_swapped_arguments_are_detected(made, tmp_path, capsys):
    # rows computed at alpha 0.5 passed off as an alpha 0.01 log by editing its args file
    log = copy_log(made, tmp_path, "loose")
    sidecar = tmp_path / "log.tsv.args.json"
    recorded = json.loads(sidecar.read_text())
    recorded["config"]["alpha"] = 0.01
    sidecar.write_text(json.dumps(recorded))
    code, out, err = resume(made, capsys, log, alpha=0.01)
    assert code == 2 and ("does not match its seal" in err or "exceeds" in err), err
    # rows whose values fit either way: computed with seed 1, args edited to seed 0 (a
    # public seed passed off as another, or a secret one passed off as fresh)...
    log = copy_log(made, tmp_path, "other")
    recorded = json.loads(sidecar.read_text())
    recorded["config"]["seed"] = 0
    sidecar.write_text(json.dumps(recorded))
    code, out, err = resume(made, capsys, log)
    assert_refused(code, err, "does not match its seal in log.tsv.args.json")
    # ... or the args file of another run swapped in
    shutil.copy(made[0] / "good.tsv.args.json", sidecar)
    code, out, err = resume(made, capsys, log)
    assert_refused(code, err, "does not match its seal")


def test_a_valid_looking_edit_inside_the_sealed_rows_is_detected(made, tmp_path, capsys):
    log = copy_log(made, tmp_path)
    line = a_certified_line(log)
    radius = float(log.read_text().splitlines()[line - 1].split("\t")[3])
    edit_row(log, line, radius=f"{radius * 0.99:.9g}")  # a value the run could have written
    code, _, err = resume(made, capsys, log)
    assert_refused(code, err, "does not match its seal")


def test_a_log_without_a_seal_is_refused(made, tmp_path, capsys):
    log = copy_log(made, tmp_path)
    sidecar = tmp_path / "log.tsv.args.json"
    recorded = json.loads(sidecar.read_text())
    del recorded["seal"]
    sidecar.write_text(json.dumps(recorded))
    code, _, err = resume(made, capsys, log)
    assert_refused(code, err, "holds no seal")


def test_the_untouched_log_resumes_and_a_killed_chunk_is_recomputed(made, tmp_path, capsys):
    log = copy_log(made, tmp_path)
    full = log.read_text()
    code, _, err = resume(made, capsys, log)
    assert code == 0, err
    # rows written after the last seal (killed before sealing) are cut off and recomputed
    sidecar = tmp_path / "log.tsv.args.json"
    recorded = json.loads(sidecar.read_text())
    config = recorded["config"]
    header_and_five = "".join(full.splitlines(keepends=True)[:6]).encode()
    recorded["seal"] = Seal(config).update(header_and_five).record()
    sidecar.write_text(json.dumps(recorded))
    loud = [a for a in made[1] if a != "--quiet"]
    code, out, err = dualrs(capsys, *loud, "--alpha", 0.01, "--out", log)
    assert code == 0, err
    assert "5 were in the log already" in out
    strip = lambda text: [line.split("\t")[:5] for line in text.splitlines()]  # noqa: E731
    assert strip(log.read_text()) == strip(full)


def test_summary_and_plot_refuse_nan_and_inf_radii(made, tmp_path, capsys):
    log = copy_log(made, tmp_path)
    line = a_certified_line(log)
    for bad in ("inf", "nan"):
        edit_row(log, line, radius=bad)
        with pytest.raises(ValueError, match="not a finite number"):
            certified_accuracy(str(log), [2.0])
        code, _, err = dualrs(capsys, "plot", log, "--out", tmp_path / "p.png")
        assert code == 2 and f"line {line}" in err and "not a finite number" in err, err
        assert not (tmp_path / "p.png").exists()
    table = {"correct": np.array([1, 1]), "radius": np.array([0.5, np.inf])}
    with pytest.raises(ValueError, match="not a finite number"):
        certified_accuracy(table, [2.0])


def test_dual_rows_are_bounded_by_their_sigma(tmp_path, capsys, made):
    """A Dual RS log: radius_estimator within what n_estimator / estimator_sigma allow, a
    sigma that is one of the levels, and radius <= min(R_ve, R_cls)."""
    root, _ = made
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "est.pt", TinyMLP((1, 8, 8), num_classes=2, hidden=8), "tiny_mlp")
    argv = ["certify", "--dataset", root / "toy.pt", "--dual", "--sigmas", 0.25, 0.5,
            "--estimator", tmp_path / "est.pt", "--model", root / "mlp.pt", root / "mlp.pt",
            "--n0", 10, "--n", 100, "--alpha", 0.01, "--seed", 0, "--quiet", "--out",
            tmp_path / "d.tsv"]
    code, _, err = dualrs(capsys, *argv)
    assert code == 0, err
    good = (tmp_path / "d.tsv").read_text()
    lines = good.splitlines()
    line = next((k for k, row in enumerate(lines[1:], start=2) if row.split("\t")[2] != "-1"),
                None)
    if line is None:
        pytest.skip("this toy Dual RS abstained everywhere")
    for forgery, expected in (({"sigma": "0.75"}, "sigma 0.75 is not one of the levels"),
                              ({"radius_estimator": "50"}, "radius_estimator 50 exceeds"),
                              ({"radius_classifier": "50"}, "radius_classifier 50 exceeds"),
                              ({"radius": "1e-45", "radius_estimator": "0"},
                               "exceeds min(radius_estimator")):
        (tmp_path / "d.tsv").write_text(good)
        edit_row(tmp_path / "d.tsv", line, **forgery)
        code, _, err = dualrs(capsys, *argv)
        assert_refused(code, err, f"line {line}:", expected)
