"""A newcomer's first day with the command (issue 22): one-line errors that name the real
cause, help that documents every option with examples, and one default estimator sigma."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import dualrs, make_toy
from dualrs_fast import cli
from dualrs_fast.models import TinyMLP


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_toy(root)
    return root


def one_line_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit from parse_args
        cli.main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_bad_argument_is_one_line_not_the_usage_block(capsys):
    err = one_line_error(capsys, "certify", "--sigma", "0")
    assert "argument --sigma: must be a positive number, got 0" in err
    assert "dualrs certify --help" in err and "usage:" not in err
    assert "invalid choice" in one_line_error(capsys, "certfy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_blames_the_device_not_the_checkpoint(capsys):
    code, _, err = dualrs(capsys, "certify", "--device", "cuda", "--max", 1, "--n", 10)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--device cuda" in err and "no CUDA device" in err and "--device cpu" in err
    assert "checkpoint" not in err


def test_out_in_a_missing_folder_outside_the_working_directory_is_refused(toy, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = toy / "no_such_folder"  # not under the working directory
    common = ["--dataset", toy / "toy.pt", "--model", toy / "mlp.pt", "--n0", 10, "--n", 50]
    code, _, err = dualrs(capsys, "certify", *common, "--out", missing / "x.tsv")
    assert code == 2 and "does not exist" in err and f"mkdir -p {missing}" in err
    assert not missing.exists()
    code, _, err = dualrs(capsys, "certify", *common, "--out", "runs/x.tsv")  # under cwd: made
    assert code == 0, err
    assert (tmp_path / "runs" / "x.tsv").is_file()


def test_every_option_has_help_and_every_command_examples():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"dualrs {name} {action.option_strings or action.dest}: no help"
        text = sub.format_help()
        assert "example" in text, f"dualrs {name} --help has no example"
    assert "certified per call" not in commands["predict"].format_help()
    assert "default:" in commands["certify"].format_help().split("--threads THREADS")[-1][:80]


def test_top_level_examples_are_bounded_and_the_estimator_uses_the_largest_level():
    text = cli.build_parser().format_help()
    assert "--estimator-sigma" not in text  # the old example capped every radius at 1.585
    for line in text.splitlines():
        if line.strip().startswith("dualrs certify") or line.strip().startswith("dualrs predict"):
            assert "--max" in line, f"an example over all 1000 images at n = 100,000: {line}"


def test_a_state_dict_estimator_is_smoothed_at_the_largest_level_by_default(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(TinyMLP(num_classes=3).state_dict(), tmp_path / "est.pt")  # default arguments
    code, out, err = dualrs(capsys, "certify", "--dual", "--estimator", tmp_path / "est.pt",
                            "--estimator-arch", "tiny_mlp", "--n0", 10, "--n", 50, "--max", 2,
                            "--seed", 0, "--quiet", "--out", tmp_path / "d.tsv")
    assert code == 0, err
    recorded = json.loads((tmp_path / "d.tsv.args.json").read_text())
    assert recorded["config"]["estimator_sigma"] == 1.0  # was 0.25: every radius capped


def test_ctrl_c_under_procs_is_reported_once(toy, tmp_path):
    log = tmp_path / "big.tsv"
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "dualrs_fast", "certify", "--dataset", str(toy / "toy.pt"),
         "--model", str(toy / "mlp.pt"), "--n", "20000000", "--chunk", "1", "--procs", "2",
         "--seed", "0", "--out", str(log)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
        # as in a terminal's foreground job: a runner started in the background (`cmd &`)
        # hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not list(tmp_path.glob("big.tsv.rank*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # the workers are sampling now
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert err.count("interrupted") == 1, err


# --------------------------------------------------------------------------- the API


def test_an_image_without_its_channel_axis_gets_one_line_naming_the_fix():
    import dualrs_fast as drs
    from dualrs_fast.models import SmallCNN
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match=r"shape \(28, 28\), read as a batch of 28 inputs of "
                                         r"shape \(28,\): for one image \(H, W\) pass x\[None\]"):
        drs.certify(model, torch.rand(28, 28), sigma=0.25, n0=10, n=10, seed=0)
    r = drs.certify(model, torch.rand(28, 28)[None], sigma=0.25, n0=10, n=10, seed=0)
    assert r.prediction.shape == (1,)


def test_a_list_input_names_the_conversion():
    import dualrs_fast as drs
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    with pytest.raises(TypeError, match=r"got list: torch.stack\(x\) for a list of image"):
        drs.certify(model, [torch.rand(4), torch.rand(4)], sigma=0.25, n0=10, n=10, seed=0)


def test_warnings_from_the_command_are_one_line(capsys, monkeypatch):
    import warnings

    def dispatch(args):
        warnings.warn("sigma is small", UserWarning)  # as a library warning inside a command
        return 0
    monkeypatch.setattr(cli, "_dispatch", dispatch)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["plot", "some.tsv"]) == 0
    assert capsys.readouterr().err == "dualrs plot: warning: sigma is small\n"


def test_cohen_certify_makes_its_outfile_folder_under_the_working_directory(toy, tmp_path,
                                                                            monkeypatch):
    """docs/cohen.md's `python -m dualrs_fast.cohen_certify ... runs/r110_cohen.tsv` works in a
    fresh clone (no runs/ yet); a missing folder elsewhere is refused before anything loads."""
    from dualrs_fast import cohen_certify
    monkeypatch.chdir(tmp_path)
    common = [str(toy / "toy.pt"), str(toy / "mlp.pt"), "0.5"]
    options = ["--N0", "10", "--N", "50", "--max", "2", "--seed", "0"]
    missing = toy / "no_such_folder"  # not under the working directory
    with pytest.raises(SystemExit) as exit_info:
        cohen_certify.main([*common, str(missing / "x.tsv"), *options])
    assert "does not exist" in str(exit_info.value) and f"mkdir -p {missing}" in str(exit_info.value)
    assert not missing.exists()
    assert cohen_certify.main([*common, "runs/x.tsv", *options]) == 0
    lines = (tmp_path / "runs" / "x.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["idx", "label", "predict"] and len(lines) == 3
