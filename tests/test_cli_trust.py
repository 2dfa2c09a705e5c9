"""What the `dualrs` command trusts: the default noise seed is a fresh secret one (printed,
recorded, reused on resume), TorchScript files (which run code) need an explicit opt-in, and
the workers of a --procs run die with their parent."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dualrs_fast import cli, runner, smoothing
from dualrs_fast.log_seal import Seal

from cli_helpers import dualrs, make_toy, rows

QUICK = ["--n0", "10", "--n", "100", "--alpha", "0.01", "--quiet"]


def printed_seed(err: str) -> int:
    """The seed line: on stderr, or with --quiet in the summary (stdout with --out)."""
    lines = [line for line in err.splitlines() if ": seed " in line]
    assert len(lines) == 1, err
    return int(lines[0].split(": seed ")[1].split()[0])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    make_toy(root, inputs=6)
    return root


# --------------------------------------------------------------------------- the seed


def test_default_seed_is_fresh_secret_printed_and_recorded(toy, tmp_path, capsys, monkeypatch):
    seen = []
    real = smoothing.certify

    def spy(*args, **kwargs):  # the API must always get an explicit integer seed
        seen.append(kwargs["seed"])
        return real(*args, **kwargs)
    monkeypatch.setattr(smoothing, "certify", spy)
    common = ["certify", "--dataset", toy / "toy.pt", "--model", toy / "mlp.pt", *QUICK]
    code, out_a, err_a = dualrs(capsys, *common, "--out", tmp_path / "a.tsv")
    assert code == 0, err_a
    code, out_b, err_b = dualrs(capsys, *common, "--out", tmp_path / "b.tsv")
    assert code == 0, err_b
    err_a, err_b = out_a + err_a, out_b + err_b  # --quiet: the seed is in the summary
    seed_a, seed_b = printed_seed(err_a), printed_seed(err_b)
    assert seed_a != seed_b and seed_a != 0  # 63 random bits: equal or 0 by chance ~never
    assert "--seed" in err_a
    assert all(type(s) is int for s in seen) and set(seen) == {seed_a, seed_b}
    config = json.loads((tmp_path / "a.tsv.args.json").read_text())["config"]
    assert config["seed"] == seed_a
    # passing the printed seed back reproduces the run
    code, _, err = dualrs(capsys, *common, "--seed", seed_a, "--out", tmp_path / "c.tsv")
    assert code == 0 and ": seed " not in err  # an explicit seed is not announced
    assert rows(tmp_path / "c.tsv") == rows(tmp_path / "a.tsv")


def test_resume_without_seed_reuses_the_recorded_one(toy, tmp_path, capsys):
    common = ["certify", "--dataset", toy / "toy.pt", "--model", toy / "mlp.pt", *QUICK]
    log = tmp_path / "log.tsv"
    code, _, err = dualrs(capsys, *common, "--max", 3, "--seed", 12345, "--out", tmp_path / "x")
    assert code == 0, err
    code, out, err = dualrs(capsys, *common, "--out", log)
    seed = printed_seed(out + err)
    full = rows(log)
    lines = log.read_text().splitlines(keepends=True)  # as if killed after 3 rows
    log.write_text("".join(lines[:4]))
    sidecar = Path(str(log) + ".args.json")
    recorded = json.loads(sidecar.read_text())
    recorded["seal"] = Seal(recorded["config"]).update(log.read_bytes()).record()
    sidecar.write_text(json.dumps(recorded))
    code, out, err = dualrs(capsys, *common, "--out", log)
    assert code == 0, err
    assert printed_seed(out + err) == seed and "recorded" in out + err
    assert rows(log) == full
    # --overwrite starts afresh: a new secret seed
    code, out, err = dualrs(capsys, *common, "--overwrite", "--out", log)
    assert code == 0 and printed_seed(out + err) != seed


def test_stdout_log_gets_the_seed_on_stderr_only(toy, capsys):
    code, out, err = dualrs(capsys, "predict", "--dataset", toy / "toy.pt", "--model",
                            toy / "mlp.pt", "--n", 50, "--quiet")
    assert code == 0, err
    assert out.splitlines()[0] == "idx\tlabel\tpredict\tcorrect\ttime" and len(out.splitlines()) == 7
    printed_seed(err)


def test_ranks_started_without_a_seed_share_rank_0s(toy, tmp_path, capsys):
    """Ranks started by torchrun (here: spawned like it) each parse a missing --seed; they
    must all use the one rank 0 draws, else rows of other ranks use other noise."""
    argv = ["certify", "--dataset", toy / "toy.pt", "--model", toy / "mlp.pt", *QUICK,
            "--chunk", 1, "--out", tmp_path / "two.tsv"]
    args = cli.build_parser().parse_args([str(a) for a in argv])
    assert args.seed is None
    mp.spawn(runner._spawned, args=(2, str(tmp_path / "rendezvous"), 1, cli._rank_main, (args,)),
             nprocs=2)
    seed = json.loads((tmp_path / "two.tsv.args.json").read_text())["config"]["seed"]
    code, _, err = dualrs(capsys, *argv[:-1], tmp_path / "one.tsv", "--seed", seed)
    assert code == 0, err
    assert rows(tmp_path / "two.tsv") == rows(tmp_path / "one.tsv")


# --------------------------------------------------------------------------- TorchScript


class WritesAFile(torch.nn.Module):
    """A TorchScript model that overwrites the bytes of a file when called: harmless here
    (a marker in tmp_path), but it could be any file the user can write."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.fc = torch.nn.Linear(64, 4)

    def forward(self, x):
        mapped = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(120)
        return self.fc(x.flatten(1)) + 0.0 * mapped.sum().float()


def test_torchscript_runs_only_with_allow_torchscript(toy, tmp_path, capsys):
    marker = tmp_path / "marker"
    marker.write_bytes(b"\0" * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(WritesAFile(str(marker))), tmp_path / "evil.pt")
    argv = ["certify", "--dataset", toy / "toy.pt", "--model", tmp_path / "evil.pt",
            "--sigma", 0.5, "--max", 1, *QUICK, "--seed", 0]
    for command in (argv, argv + ["--out", tmp_path / "log.tsv"],
                    ["train", "--estimator", "--dataset", toy / "toy.pt", "--sigmas", 0.5,
                     "--model", tmp_path / "evil.pt", "--epochs", 0, "--quiet",
                     "--out", tmp_path / "est.pt"]):
        code, _, err = dualrs(capsys, *command)
        assert code == 2 and "--allow-torchscript" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert marker.read_bytes() == b"\0" * 4, "the file's code ran without the opt-in"
    # opting in runs it (this is what the flag's help warns about)
    code, _, err = dualrs(capsys, *argv, "--allow-torchscript")
    assert code == 0, err
    assert marker.read_bytes() == b"xxxx"


def test_allow_torchscript_help_says_it_executes_code(capsys):
    for command in ("certify", "predict", "train"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--allow-torchscript" in text and "executes" in text


# --------------------------------------------------------------------------- --procs


def _children(pid: int) -> set:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its new parent may not reap it here)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_of_a_procs_run_stops_its_workers(toy, tmp_path):
    """Rank 1 (one input) finishes first and waits for rank 0 (two inputs) inside a gloo
    collective, where torch's own SIGINT-on-parent-death cannot interrupt it."""
    log = tmp_path / "log.tsv"
    argv = ["certify", "--dataset", toy / "toy.pt", "--model", toy / "mlp.pt", "--max", 3,
            "--n0", 10, "--n", 1_000_000, "--chunk", 1, "--procs", 2, "--seed", 0, "--quiet",
            "--out", log]
    parent = subprocess.Popen([sys.executable, "-P", "-m", "dualrs_fast", *map(str, argv)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers, deadline = set(), time.monotonic() + 300
    rank1 = runner.shard_path(log, 1, 2)
    while time.monotonic() < deadline and parent.poll() is None:
        workers = {p for p in _children(parent.pid)
                   if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()}
        if len(workers) >= 2 and rank1.exists() and rank1.read_text().count("\n") >= 2:
            break  # rank 1 is done and waits for rank 0
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert len(workers) >= 2, "the run did not start its workers"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:  # do not leave them running when the test fails
        os.kill(p, signal.SIGKILL)
    assert not survivors, "workers outlived their killed parent"
