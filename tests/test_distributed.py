"""Two CPU processes (torch.multiprocessing.spawn, gloo, file:// rendezvous) certify the
inputs r::2 each; rank 0 merges one log identical, up to the time column, to one process."""
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dualrs_fast import cli, runner
from dualrs_fast.log_seal import Seal
from dualrs_fast.models import TinyMLP, save_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def rows(path):
    lines = Path(path).read_text().splitlines()
    time_col = lines[0].split("\t").index("time")
    return [[c for k, c in enumerate(line.split("\t")) if k != time_col] for line in lines]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(11, 1, 8, 8, generator=g),
                "y": torch.randint(0, 4, (11,), generator=g)}, root / "data.pt")
    torch.manual_seed(0)
    for name, classes in (("a", 4), ("b", 4), ("est", 2)):
        model = TinyMLP((1, 8, 8), num_classes=classes, hidden=16, mean=0.5, std=0.5)
        save_checkpoint(root / f"{name}.pt", model, "tiny_mlp", meta={"sigma": 0.5})
    return root


def standard_args(files, out):
    return ["certify", "--dataset", files / "data.pt", "--model", files / "a.pt", "--n0", 20,
            "--n", 300, "--alpha", 0.01, "--chunk", 2, "--seed", 0, "--quiet", "--out", out]


def dual_args(files, out):
    return ["certify", "--dataset", files / "data.pt", "--dual", "--sigmas", 0.25, 0.5,
            "--estimator", files / "est.pt", "--model", files / "a.pt", files / "b.pt",
            "--n0", 20, "--n", 300, "--alpha", 0.01, "--chunk", 3, "--seed", 0, "--quiet",
            "--out", out]


def parse(argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


def test_two_spawned_ranks_match_one_process(files, tmp_path):
    assert cli.main([str(a) for a in standard_args(files, tmp_path / "one.tsv")]) == 0
    args = parse(standard_args(files, tmp_path / "two.tsv"))
    init = tmp_path / "rendezvous"
    mp.spawn(runner._spawned, args=(2, str(init), 1, cli._rank_main, (args,)), nprocs=2)
    assert rows(tmp_path / "two.tsv") == rows(tmp_path / "one.tsv")
    assert len(rows(tmp_path / "two.tsv")) == 12
    assert runner.shard_paths(tmp_path / "two.tsv") == []
    one = json.loads((tmp_path / "one.tsv.args.json").read_text())["config"]
    assert json.loads((tmp_path / "two.tsv.args.json").read_text())["config"] == one


def test_dual_with_procs_resumes_a_single_process_log(files, tmp_path):
    """--procs 2 finishes a log that a single process left half done (killed)."""
    assert cli.main([str(a) for a in dual_args(files, tmp_path / "one.tsv")]) == 0
    full = (tmp_path / "one.tsv").read_text().splitlines(keepends=True)
    (tmp_path / "two.tsv").write_text("".join(full[:5]) + full[5][:4])  # 4 rows and a half
    sidecar = json.loads((tmp_path / "one.tsv.args.json").read_text())
    sidecar["seal"] = Seal(sidecar["config"]).update("".join(full[:5]).encode()).record()
    (tmp_path / "two.tsv.args.json").write_text(json.dumps(sidecar))  # sealed after 4 rows
    assert cli.main([str(a) for a in dual_args(files, tmp_path / "two.tsv")]
                    + ["--procs", "2"]) == 0
    assert rows(tmp_path / "two.tsv") == rows(tmp_path / "one.tsv")
    assert rows(tmp_path / "two.tsv")[0][-3:] == ["sigma", "radius_estimator",
                                                  "radius_classifier"]


def test_a_refused_log_stops_every_rank(files, tmp_path, capfd):
    assert cli.main([str(a) for a in standard_args(files, tmp_path / "log.tsv")]) == 0
    argv = [str(a) for a in standard_args(files, tmp_path / "log.tsv")]
    argv[argv.index("--n") + 1] = "400"
    assert cli.main(argv + ["--procs", "2"]) == 2
    assert "n: 300 in the log, 400 now" in capfd.readouterr().err
