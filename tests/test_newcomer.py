"""A newcomer's first hour (issue 13): the checkout imports from the repo root, progress
output stays short off a terminal, --quiet keeps the summary, errors are one line, and
inputs far outside [0, 1] are warned about."""
import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import dualrs_fast as drs
from dualrs_fast._checkout import wire_checkout
from dualrs_fast.models import SmallCNN, TinyMLP
from dualrs_fast.progress import MilestoneLines, progress_bar
from dualrs_fast.validation import InputRangeWarning

REPO = Path(__file__).resolve().parents[1]


from cli_helpers import dualrs, make_toy  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_toy(root)
    return root


# --------------------------------------------------------------------------- the checkout


@pytest.mark.skipif(not any((REPO / "build" / "cmake").glob("_cbounds*")),
                    reason="no extension built in build/cmake (run make venv)")
def test_checkout_imports_from_the_repo_root():
    code = ("import dualrs_fast, dualrs_fast.kernels as k; from dualrs_fast import cli; "
            "print(dualrs_fast.__file__); print(k.__file__); print(dualrs_fast.BOUNDS_BACKEND)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    package, kernels, backend = out.stdout.split()
    assert Path(package) == REPO / "dualrs_fast" / "__init__.py"  # the checkout's own code
    assert Path(kernels) == REPO / "kernels" / "__init__.py"
    assert backend == "cpp"  # with the extension make venv built


def test_an_unbuilt_checkout_says_what_to_run(tmp_path):
    (tmp_path / "dualrs_fast").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    with pytest.raises(ImportError, match="run `make venv`"):
        wire_checkout(tmp_path / "dualrs_fast")
    wire_checkout(Path(drs.__file__).parent)  # the installed package: nothing to do


# --------------------------------------------------------------------------- progress output


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_off_a_terminal_is_at_most_three_lines_with_eta():
    clock, stream = FakeClock(), io.StringIO()
    bar = MilestoneLines(1000, "certify", "samples", stream=stream, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        bar.update(10)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("certify: 25% (250/1,000 samples") and "ETA 1:15" in lines[0]
    assert "ETA 0:25" in lines[2]


def test_short_calls_print_no_progress_off_a_terminal():
    clock, stream = FakeClock(), io.StringIO()
    bar = MilestoneLines(100, "certify", "samples", stream=stream, clock=clock)
    for _ in range(100):
        clock.now += 0.05
        bar.update(1)
    assert stream.getvalue() == ""
    assert isinstance(progress_bar(10, "x", "samples", True), MilestoneLines)  # stderr: no tty
    assert progress_bar(10, "x", "samples", None).disable  # auto: only on a terminal


def test_cli_progress_in_a_log_is_short_and_quiet_keeps_the_summary(toy, tmp_path, capsys):
    common = ["certify", "--dataset", toy / "toy.pt", "--model", toy / "mlp.pt", "--n0", 20,
              "--n", 400, "--chunk", 1]
    code, out, err = dualrs(capsys, *common, "--out", tmp_path / "a.tsv")
    assert code == 0, err
    assert len(err.splitlines()) <= 3  # stderr is not a terminal here: no bar per update
    assert "certified accuracy" in out
    code, out, err = dualrs(capsys, *common, "--quiet", "--out", tmp_path / "b.tsv")
    assert code == 0 and err == ""
    assert "certify: 12 inputs" in out and "certified accuracy" in out
    code, out, err = dualrs(capsys, *common, "--quiet", "--max", 2)  # rows on stdout
    assert out.splitlines()[0].startswith("idx\t") and len(out.splitlines()) == 3
    assert "certified accuracy" in err  # the summary keeps stdout a clean table


# --------------------------------------------------------------------------- errors


def one_line_error(capsys, *argv) -> str:
    code, _, err = dualrs(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "\x1b" not in err
    return err


def test_a_state_dict_of_another_architecture_is_a_one_line_error(toy, tmp_path, capsys):
    torch.save(SmallCNN(input_size=8, num_classes=4).state_dict(), tmp_path / "cnn.pt")
    err = one_line_error(capsys, "certify", "--dataset", toy / "toy.pt", "--model",
                         tmp_path / "cnn.pt", "--arch", "resnet20", "--sigma", 0.5)
    assert "does not match resnet20" in err and "missing keys" in err
    assert "unexpected keys (features.0.weight" in err


def test_a_whole_pickled_module_is_a_one_line_error(toy, tmp_path, capsys):
    torch.save(TinyMLP((1, 8, 8), num_classes=4, hidden=4), tmp_path / "whole.pt")
    err = one_line_error(capsys, "certify", "--dataset", toy / "toy.pt", "--model",
                         tmp_path / "whole.pt", "--sigma", 0.5)
    assert "pickled Python objects" in err and err.rstrip().endswith("arbitrary code")


# --------------------------------------------------------------------------- API surprises


def test_inputs_far_outside_the_unit_range_are_warned_about(linear_model):
    x = torch.rand(2, 1, 28, 28)
    with pytest.warns(InputRangeWarning, match=r"far outside \[0, 1\]"):
        drs.certify(linear_model, x * 255, sigma=0.25, n0=10, n=20)
    with pytest.warns(InputRangeWarning):
        drs.predict(linear_model, (x - 0.13) / 0.31, sigma=0.25, n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an image a little outside [0, 1] is fine
        drs.certify(linear_model, x * 1.2 - 0.1, sigma=0.25, n0=10, n=20)


def test_train_threads_are_restored_after_the_command(tmp_path, capsys):
    before = torch.get_num_threads()
    code, out, err = dualrs(capsys, "train", "--arch", "tiny_mlp", "--epochs", 1, "--max", 64,
                            "--threads", 1, "--quiet", "--out", tmp_path / "m.pt")
    assert code == 0, err
    assert "trained tiny_mlp" in out  # the summary, also with --quiet
    assert torch.get_num_threads() == before
