"""The `dualrs` command line: certify / predict / plot / train, model loading and its errors,
and a real kill -9 in the middle of a run followed by a resume."""
import inspect
import os
import signal
import warnings
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dualrs_fast import cli
from dualrs_fast.models import TinyMLP, save_checkpoint

from cli_helpers import dualrs, make_toy, rows

QUICK = ["--n0", "20", "--n", "200", "--alpha", "0.01", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 12-input 8x8 dataset with 4 classes and a TinyMLP checkpoint recording sigma 0.5."""
    root = tmp_path_factory.mktemp("toy")
    model = make_toy(root)
    torch.save(model.state_dict(), root / "mlp_state.pt")
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch, still common
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 8, 8)), root / "mlp_script.pt")
    return root


def test_help_explains_sigma_scale_and_alpha(capsys):
    for command in ("certify", "predict"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "images are in [0, 1]" in text and "before the model's normalisation" in text
        assert "probability" in text and "alpha" in text
    for command in ("plot", "train", "demo"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
    assert "failure probability of each certificate" in " ".join(cli.ALPHA_HELP.split())


def test_certify_embedded_default(tmp_path, capsys):
    log = tmp_path / "s.tsv"
    code, out, _ = dualrs(capsys, "certify", "--sigma", "0.5", "--max", 3, *QUICK, "--out", log)
    assert code == 0 and "certified accuracy: r=0:" in out  # --quiet keeps the summary
    table = rows(log)
    assert table[0] == ["idx", "label", "predict", "radius", "correct"]
    assert [r[0] for r in table[1:]] == ["0", "1", "2"]
    from dualrs_fast.data import load_default_split
    assert [int(r[1]) for r in table[1:]] == load_default_split()[3][:3].tolist()
    # the same command again: the log is complete, nothing changes; the summary is printed
    code, out, _ = dualrs(capsys, "certify", "--sigma", "0.5", "--max", 3, *QUICK[:-1],
                          "--out", log)
    assert code == 0 and "certified accuracy: r=0:" in out and rows(log) == table


def test_checkpoint_state_dict_and_torchscript_give_the_same_rows(toy, tmp_path, capsys):
    common = ["certify", "--dataset", toy / "toy.pt", *QUICK, "--sigma", "0.5"]
    dualrs(capsys, *common, "--model", toy / "mlp.pt", "--out", tmp_path / "a.tsv")
    dualrs(capsys, *common, "--model", toy / "mlp_state.pt", "--arch", "tiny_mlp",
           "--arch-kwargs", '{"in_shape": [1, 8, 8], "hidden": 16, "mean": 0.5, "std": 0.5}',
           "--out", tmp_path / "b.tsv")
    dualrs(capsys, *common, "--model", toy / "mlp_script.pt", "--allow-torchscript",
           "--out", tmp_path / "c.tsv")
    assert len(rows(tmp_path / "a.tsv")) == 13
    assert rows(tmp_path / "a.tsv") == rows(tmp_path / "b.tsv") == rows(tmp_path / "c.tsv")
    # --sigma defaults to the sigma the checkpoint records (0.5): same run, so it resumes
    code, _, err = dualrs(capsys, *common[:-2], "--model", toy / "mlp.pt", "--out", tmp_path / "a.tsv")
    assert code == 0, err


@pytest.mark.parametrize("case, message", [
    ("missing", "model file not found"),
    ("state_dict_without_arch", "name its architecture with --arch"),
    ("wrong_shapes", "does not match small_cnn"),
    ("wrong_classes", "returns 2 classes but the labels go up to 3"),
    ("pickled_module", "whole pickled modules are not loaded"),
    ("no_sigma", "pass --sigma"),
    ("pixels_0_255", "rescale"),
    ("dual_without_estimator", "needs --estimator"),
    ("estimator_width", "the estimator returns 4 logits, expected 2"),
])
def test_clear_errors(case, message, toy, tmp_path, capsys):
    data = ["--dataset", toy / "toy.pt"]
    model = ["--model", toy / "mlp.pt"]
    if case == "missing":
        argv = [*data, "--model", tmp_path / "nope.pt"]
    elif case == "state_dict_without_arch":
        argv = [*data, "--model", toy / "mlp_state.pt", "--sigma", 0.5]
    elif case == "wrong_shapes":
        argv = [*data, "--model", toy / "mlp_state.pt", "--arch", "small_cnn", "--sigma", 0.5]
    elif case == "wrong_classes":
        save_checkpoint(tmp_path / "m2.pt", TinyMLP((1, 8, 8), num_classes=2, hidden=4), "tiny_mlp")
        argv = [*data, "--model", tmp_path / "m2.pt", "--sigma", 0.5]
    elif case == "pickled_module":
        torch.save(TinyMLP((1, 8, 8), num_classes=4, hidden=4), tmp_path / "whole.pt")
        argv = [*data, "--model", tmp_path / "whole.pt", "--sigma", 0.5]
    elif case == "no_sigma":
        save_checkpoint(tmp_path / "m.pt", TinyMLP((1, 8, 8), num_classes=4, hidden=4), "tiny_mlp")
        argv = [*data, "--model", tmp_path / "m.pt"]
    elif case == "pixels_0_255":
        torch.save({"x": torch.rand(3, 1, 8, 8) * 255, "y": torch.zeros(3, dtype=torch.long)},
                   tmp_path / "raw.pt")
        argv = ["--dataset", tmp_path / "raw.pt", *model]
    elif case == "dual_without_estimator":
        argv = [*data, "--dual", "--sigmas", 0.25, 0.5, "--model", toy / "mlp.pt", toy / "mlp.pt"]
    else:
        argv = [*data, "--dual", "--sigmas", 0.25, 0.5, "--estimator", toy / "mlp.pt",
                "--model", toy / "mlp.pt", toy / "mlp.pt"]
    code, out, err = dualrs(capsys, "certify", *argv, *QUICK)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("dualrs certify: error:")


def test_dual_certify_and_predict(toy, tmp_path, capsys):
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "est.pt", TinyMLP((1, 8, 8), num_classes=2, hidden=8), "tiny_mlp")
    save_checkpoint(tmp_path / "e2.pt", TinyMLP((1, 8, 8), num_classes=4, hidden=8), "tiny_mlp")
    dual = ["--dataset", toy / "toy.pt", "--dual", "--sigmas", 0.25, 0.5, "--estimator",
            tmp_path / "est.pt", "--model", toy / "mlp.pt", tmp_path / "e2.pt"]
    code, _, err = dualrs(capsys, "certify", *dual, *QUICK, "--out", tmp_path / "d.tsv")
    assert code == 0, err
    table = rows(tmp_path / "d.tsv")
    assert table[0][5:] == ["sigma", "radius_estimator", "radius_classifier"]
    for r in table[1:]:
        assert r[5] in ("nan", "0.25", "0.5")
        assert float(r[3]) == min(float(r[6]), float(r[7])) or r[2] == "-1"
    code, out, err = dualrs(capsys, "predict", *dual, "--n", 200, "--alpha", 0.01,
                            "--out", tmp_path / "p.tsv")
    assert code == 0, err
    assert rows(tmp_path / "p.tsv")[0] == ["idx", "label", "predict", "correct"]
    assert "predict: 12 inputs" in out and "accuracy" in out


def test_dual_with_embedded_experts_and_stdout_log(tmp_path, capsys):
    from dualrs_fast.models import SmallCNN
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "est.pt", SmallCNN(num_classes=3), "small_cnn")
    code, out, err = dualrs(capsys, "certify", "--dual", "--estimator", tmp_path / "est.pt",
                            "--max", 2, "--n0", 10, "--n", 100, "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split("\t")[-3:] == ["sigma", "radius_estimator", "radius_classifier"]
    assert len(lines) == 3


def test_plot_and_table(toy, tmp_path, capsys, monkeypatch):
    for sigma in (0.25, 0.5):
        dualrs(capsys, "certify", "--dataset", toy / "toy.pt", "--model", toy / "mlp.pt",
               "--sigma", sigma, *QUICK, "--out", tmp_path / f"s{sigma}.tsv")
    monkeypatch.chdir(tmp_path)  # a missing folder under the working directory is created
    png = tmp_path / "fig" / "acc.png"
    code, out, err = dualrs(capsys, "plot", tmp_path / "s0.25.tsv", tmp_path / "s0.5.tsv",
                            "--out", "fig/acc.png", "--radii", "0,0.5")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "σ = 0.25" in out and "σ = 0.5" in out and "r=0.5" in out
    code, _, err = dualrs(capsys, "plot", tmp_path / "missing.tsv")
    assert code == 2 and "log not found" in err


def test_train_then_certify_with_the_recorded_sigma(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    code, out, err = dualrs(capsys, "train", "--arch", "tiny_mlp", "--sigma", 0.5, "--epochs", 1,
                            "--max", 300, "--out", ckpt)
    assert code == 0, err
    assert "held-out accuracy" in out and ckpt.is_file()
    code, _, err = dualrs(capsys, "certify", "--model", ckpt, "--max", 2, *QUICK,
                          "--out", tmp_path / "log.tsv")
    assert code == 0, err
    import json
    assert json.loads((tmp_path / "log.tsv.args.json").read_text())["config"]["sigma"] == 0.5


def test_kill_9_mid_run_then_resume(toy, tmp_path, capsys):
    """A real SIGKILL while rows are being written; the restarted run completes the log with
    exactly the rows of an uninterrupted run."""
    g = torch.Generator().manual_seed(1)
    torch.save({"x": torch.rand(40, 1, 8, 8, generator=g),
                "y": torch.randint(0, 4, (40,), generator=g)}, tmp_path / "data.pt")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "wide.pt", TinyMLP((1, 8, 8), num_classes=4, hidden=1024),
                    "tiny_mlp", meta={"sigma": 0.5})
    argv = ["certify", "--dataset", tmp_path / "data.pt", "--model", tmp_path / "wide.pt",
            "--n0", 20, "--n", 3000, "--chunk", 1, "--quiet"]
    log = tmp_path / "killed.tsv"
    proc = subprocess.Popen([sys.executable, "-P", "-m", "dualrs_fast", *map(str, argv),
                             "--out", str(log)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 4:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = log.read_text().count("\n") - 1
    assert 3 <= written < 40, "the run was not killed mid-way"
    code, _, err = dualrs(capsys, *argv, "--out", log)  # resumes with the recorded seed
    assert code == 0, err
    import json
    seed = json.loads(Path(str(log) + ".args.json").read_text())["config"]["seed"]
    dualrs(capsys, *argv, "--seed", seed, "--out", tmp_path / "full.tsv")
    assert rows(log) == rows(tmp_path / "full.tsv") and len(rows(log)) == 41
    assert not Path(str(log) + ".lock").exists()


def test_console_script():
    script = Path(sys.executable).with_name("dualrs")
    if not script.exists():
        pytest.skip("dualrs console script not installed beside this interpreter")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "certify" in out.stdout and "plot" in out.stdout


# --------------------------------------------------------------------------- Dual RS defaults


def test_certify_dual_uses_the_embedded_estimator(tmp_path, capsys):
    from dualrs_fast.models import load_default_dual
    default = load_default_dual()
    code, out, err = dualrs(capsys, "certify", "--dual", "--max", 2, "--n0", 10, "--n", 100,
                            "--out", tmp_path / "d.tsv")
    assert code == 0, err
    assert "embedded Dual RS: class_group estimator" in out and "certified accuracy" in out
    table = rows(tmp_path / "d.tsv")
    assert table[0][5:] == ["sigma", "radius_estimator", "radius_classifier"] and len(table) == 3
    import json
    config = json.loads((tmp_path / "d.tsv.args.json").read_text())["config"]
    assert config["sigmas"] == list(default.sigmas)
    assert config["estimator_sigma"] == default.estimator_sigma
    from dualrs_fast.loading import fingerprint  # the default estimator and experts
    assert config["model_sha256"] == fingerprint(default.estimator, *dict.fromkeys(default.routes))
    code, _, err = dualrs(capsys, "certify", "--dual", "--sigmas", 0.25, 0.5, *QUICK)
    assert code == 2 and "pass --estimator PATH for other --sigmas" in err


def test_train_estimator_then_certify_with_it(toy, tmp_path, capsys):
    est = tmp_path / "est.pt"
    code, out, err = dualrs(capsys, "train", "--estimator", "--dataset", toy / "toy.pt",
                            "--sigmas", 0.25, 0.5, "--estimator-sigma", 0.25,
                            "--model", toy / "mlp.pt", toy / "mlp.pt", "--arch", "tiny_mlp",
                            "--arch-kwargs", '{"hidden": 8}', "--epochs", 2,
                            "--label-samples", 8, "--out", est)
    assert code == 0, err
    assert "labels per sigma: 0.25:" in out and est.is_file()
    from dualrs_fast.models import load_checkpoint
    model, meta = load_checkpoint(est)
    assert meta["sigmas"] == [0.25, 0.5] and meta["estimator_sigma"] == 0.25
    assert sum(meta["label_histogram"]) + meta["inputs_dropped"] == 12
    assert model.config["num_classes"] == 2
    # certify reads the sigmas and the estimator sigma from the checkpoint
    log = tmp_path / "d.tsv"
    code, _, err = dualrs(capsys, "certify", "--dataset", toy / "toy.pt", "--dual", "--estimator",
                          est, "--model", toy / "mlp.pt", toy / "mlp.pt", *QUICK, "--out", log)
    assert code == 0, err
    import json
    config = json.loads((tmp_path / "d.tsv.args.json").read_text())["config"]
    assert config["sigmas"] == [0.25, 0.5] and config["estimator_sigma"] == 0.25
    assert {r[5] for r in rows(log)[1:]} <= {"nan", "0.25", "0.5"}
    # experts must match the levels
    code, _, err = dualrs(capsys, "train", "--estimator", "--dataset", toy / "toy.pt",
                          "--sigmas", 0.25, 0.5, "--model", toy / "mlp.pt", "--out", est)
    assert code == 2 and "one --model per --sigmas level" in err
    # --init-from-sigma: from an expert's layers where name and shape match (the toy MLP's
    # hidden layer, not its 4-class head); zero epochs keep them as copied
    warm = tmp_path / "warm.pt"
    common = ("train", "--estimator", "--dataset", toy / "toy.pt", "--sigmas", 0.25, 0.5,
              "--model", toy / "mlp.pt", toy / "mlp.pt", "--label-samples", 8, "--epochs", 0)
    code, _, err = dualrs(capsys, *common, "--arch", "tiny_mlp", "--arch-kwargs",
                          '{"hidden": 16}', "--init-from-sigma", 0.5, "--out", warm)
    assert code == 0, err
    expert, _ = load_checkpoint(toy / "mlp.pt")
    model, meta = load_checkpoint(warm)
    assert meta["train_dual"]["init_from_sigma"] == 0.5
    assert torch.equal(model.net[1].weight, expert.net[1].weight)
    assert model.net[3].weight.shape == (2, 16) != expert.net[3].weight.shape
    code, _, err = dualrs(capsys, *common, "--arch", "tiny_mlp", "--init-from-sigma", 2,
                          "--out", warm)
    assert code == 2 and "not one of the experts' sigmas" in err
    code, _, err = dualrs(capsys, *common, "--init-from-sigma", 0.5, "--out", warm)
    assert code == 2 and "does not apply to class_group" in err


def test_train_estimator_with_embedded_experts(tmp_path, capsys):
    est = tmp_path / "est.pt"
    code, out, err = dualrs(capsys, "train", "--estimator", "--max", 100,
                            "--label-samples", 4, "--quiet", "--out", est)
    assert code == 0, err
    from dualrs_fast.models import ClassGroupEstimator, load_checkpoint
    model, meta = load_checkpoint(est)
    assert meta["sigmas"] == [0.25, 0.5, 1.0] and meta["estimator_sigma"] == 1.0
    assert isinstance(model, ClassGroupEstimator) and len(meta["train_dual"]["groups"]) == 10
    assert meta["train_dual"]["budget_n"] == 2000
    assert meta["train_dual"]["budget_alpha"] == pytest.approx(0.0005)
    # the same pipeline and metadata as the committed estimator (training.train_estimator)
    _, committed = load_checkpoint(Path(cli.__file__).parent / "weights" /
                                   "estimator_class_group.pt")
    assert list(meta) == list(committed) and meta["experts"] == committed["experts"]
    assert meta["data"].endswith("the first 100 of 4000 training images")
    code, out, err = dualrs(capsys, "certify", "--dual", "--estimator", est, "--max", 2,
                            "--n0", 10, "--n", 100, "--quiet")
    assert code == 0, err and len(out.splitlines()) == 3


def test_train_help_documents_the_estimator(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--estimator" in text and "--label-samples" in text and "--estimator-sigma" in text
    code, _, err = dualrs(capsys, "train", "--sigmas", 0.25, 0.5, "--out", "x.pt")
    assert code == 2 and "options of --estimator" in err


def test_train_defaults_match_the_library():
    # the CLI keeps its own literal (no torch import for --help); it must not drift
    from dualrs_fast import training
    args = cli.build_parser().parse_args(["train", "--estimator", "--out", "x.pt"])
    assert args.label_samples == training.LABEL_SAMPLES
    assert inspect.signature(training.train_estimator).parameters["label_samples"].default \
        == training.LABEL_SAMPLES
