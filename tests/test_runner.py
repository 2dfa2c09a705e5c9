"""Certification runs: logs, resume after a kill, refusal of foreign logs, shard merging."""
import json

import numpy as np
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast import runner
from dualrs_fast.log_seal import Seal
from dualrs_fast.loading import Dataset
from dualrs_fast.models import TinyMLP

N0, N = 20, 200


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return Dataset("toy", torch.rand(10, 1, 6, 6, generator=g), torch.randint(0, 3, (10,), generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyMLP(in_shape=(1, 6, 6), num_classes=3, hidden=8, mean=0.5, std=0.5).eval()


def make_task(model, data, indices=None, **overrides):
    kw = dict(sigma=0.5, n0=N0, n=N, alpha=0.01, batch_size=64, seed=3)
    kw.update(overrides)
    config = {k: v for k, v in kw.items() if k != "batch_size"}
    indices = list(range(len(data))) if indices is None else indices
    smoother = drs.StandardSmoothing(model, kw.pop("sigma"))
    return runner.certify_task(smoother, data, indices, config=config, **kw)


def without_time(path):
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in path.read_text().splitlines()]


class Killed(Exception):
    pass


def killed_after(task, rows):
    """The task, but 'killed' once `rows` rows are written."""
    done = []

    def compute(ids, progress):
        if len(done) >= rows:
            raise Killed
        out = task.compute(ids, progress)
        done.extend(out)
        return out
    return runner.Task(task.columns, task.config, task.indices, compute)


def seal_shard(shard, config):
    """What a rank that wrote this shard and was then killed leaves beside it."""
    config = json.loads(json.dumps(config, sort_keys=True))
    record = Seal(config).update(shard.read_bytes()).record()
    runner.seal_path(shard).write_text(json.dumps({"seal": record}))


def test_select_indices_follows_cohen():
    assert runner.select_indices(10) == list(range(10))
    assert runner.select_indices(10, skip=3) == [0, 3, 6, 9]
    assert runner.select_indices(10, skip=3, max_index=7) == [0, 3, 6]
    assert runner.select_indices(5, max_index=100) == list(range(5))
    with pytest.raises(ValueError):
        runner.select_indices(10, skip=0)


def test_log_rows_match_certify_and_do_not_depend_on_chunk(tmp_path, model, data):
    rows = runner.run(make_task(model, data), tmp_path / "a.tsv", chunk=3, progress=False)
    runner.run(make_task(model, data), tmp_path / "b.tsv", chunk=1, progress=False)
    assert without_time(tmp_path / "a.tsv") == without_time(tmp_path / "b.tsv")
    lines = (tmp_path / "a.tsv").read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert [int(r.split("\t")[0]) for r in lines[1:]] == list(range(10)) == sorted(rows)
    r = drs.certify(model, data.x[4], 0.5, n0=N0, n=N, alpha=0.01, seed=3, ids=[4])
    cells = lines[5].split("\t")
    assert int(cells[2]) == int(r.prediction[0])
    assert np.float32(cells[3]) == r.radius.numpy()[0]  # float32 radius round-trips exactly
    assert int(cells[4]) == int(int(r.prediction[0]) == int(data.y[4]))
    recorded = json.loads((tmp_path / "a.tsv.args.json").read_text())["config"]
    assert recorded["n"] == N and recorded["sigma"] == 0.5
    assert not (tmp_path / "a.tsv.lock").exists()


def test_resume_after_kill_appends_missing_rows_only(tmp_path, model, data):
    full = tmp_path / "full.tsv"
    runner.run(make_task(model, data), full, chunk=2, progress=False)
    log = tmp_path / "log.tsv"
    with pytest.raises(Killed):
        runner.run(killed_after(make_task(model, data), 4), log, chunk=2, progress=False)
    assert len(log.read_text().splitlines()) == 1 + 4
    with open(log, "a") as f:  # killed in the middle of writing a row
        f.write("4\t1\t2\t0.3")
    runner.run(make_task(model, data), log, chunk=2, progress=False)
    assert without_time(log) == without_time(full)
    runner.run(make_task(model, data), log, chunk=2, progress=False)  # complete: nothing to do
    assert without_time(log) == without_time(full)


def test_resume_with_other_arguments_is_refused(tmp_path, model, data):
    log = tmp_path / "log.tsv"
    with pytest.raises(Killed):
        runner.run(killed_after(make_task(model, data), 2), log, chunk=2, progress=False)
    before = log.read_text()
    with pytest.raises(runner.RunError, match=r"n: 200 in the log, 300 now"):
        runner.run(make_task(model, data, n=300), log, progress=False)
    assert log.read_text() == before
    rows = runner.run(make_task(model, data, n=300), log, progress=False, overwrite=True)
    assert len(rows) == 10


def test_log_without_recorded_arguments_is_refused(tmp_path, model, data):
    log = tmp_path / "foreign.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    with pytest.raises(runner.RunError, match="args.json"):
        runner.run(make_task(model, data), log, progress=False)


def test_corrupt_or_conflicting_logs_are_refused(tmp_path, model, data):
    log = tmp_path / "log.tsv"
    runner.run(make_task(model, data, indices=[0, 1, 2]), log, progress=False)
    good = log.read_text()
    log.write_text(good + "garbage\n")
    with pytest.raises(runner.RunError, match="malformed"):
        runner.run(make_task(model, data, indices=[0, 1, 2]), log, progress=False)
    # a shard that contradicts the log: two different certificates for one input
    log.write_text(good)
    row = good.splitlines()[1].split("\t")
    row[3] = "123"
    shard = runner.shard_path(log, 1, 2)
    shard.write_text(good.splitlines()[0] + "\n" + "\t".join(row) + "\n")
    with pytest.raises(runner.RunError, match="line 2: radius 123 exceeds"):
        runner.run(make_task(model, data, indices=[0, 1, 2]), log, progress=False)
    row[2], row[3], row[4] = "-1", "0", "0"  # a valid row, sealed, but another certificate
    shard.write_text(good.splitlines()[0] + "\n" + "\t".join(row) + "\n")
    seal_shard(shard, make_task(model, data).config)
    with pytest.raises(runner.RunError, match="conflicting rows for idx 0"):
        runner.run(make_task(model, data, indices=[0, 1, 2]), log, progress=False)


def test_shards_of_a_killed_multiprocess_run_are_merged_in_order(tmp_path, model, data):
    full = tmp_path / "full.tsv"
    runner.run(make_task(model, data), full, progress=False)
    header, *rows = full.read_text().splitlines()
    log = tmp_path / "log.tsv"
    (tmp_path / "log.tsv.args.json").write_text((tmp_path / "full.tsv.args.json").read_text())
    # rank 0 of 2 got through indices 0, 2, 4; rank 1 through 1 and half of 3's row
    runner.shard_path(log, 0, 2).write_text("\n".join([header] + rows[0:6:2]) + "\n")
    runner.shard_path(log, 1, 2).write_text("\n".join([header, rows[1]]) + "\n")
    for rank in (0, 1):
        seal_shard(runner.shard_path(log, rank, 2), make_task(model, data).config)
    with open(runner.shard_path(log, 1, 2), "a") as f:
        f.write(rows[3][:7])
    runner.run(make_task(model, data), log, chunk=4, progress=False)
    assert without_time(log) == without_time(full)
    assert runner.shard_paths(log) == []


def test_a_second_run_on_the_same_log_is_refused(tmp_path, model, data):
    log = tmp_path / "log.tsv"
    with runner._exclusive(log):
        with pytest.raises(runner.RunError, match="another run"):
            runner.run(make_task(model, data), log, progress=False)
    runner.run(make_task(model, data, indices=[0]), log, progress=False)


def test_dual_and_predict_logs_parse_with_pandas(tmp_path, model, data):
    pd = pytest.importorskip("pandas")
    torch.manual_seed(1)
    experts = {s: TinyMLP(in_shape=(1, 6, 6), num_classes=3, hidden=8).eval() for s in (0.25, 0.5)}
    estimator = TinyMLP(in_shape=(1, 6, 6), num_classes=2, hidden=8).eval()
    dual = drs.DualSmoothing(estimator, experts, sigmas=(0.25, 0.5), estimator_sigma=0.25)
    task = runner.certify_task(dual, data, list(range(6)), n0=N0, n=N, alpha=0.01,
                               batch_size=64, seed=0)
    runner.run(task, tmp_path / "dual.tsv", chunk=4, progress=False)
    table = pd.read_csv(tmp_path / "dual.tsv", sep="\t")
    assert list(table.columns) == ["idx", "label", "predict", "radius", "correct", "time",
                                   "sigma", "radius_estimator", "radius_classifier"]
    assert len(table) == 6
    r = dual.certify(data.x[:6], n0=N0, n=N, alpha=0.01, seed=0, ids=list(range(6)))
    np.testing.assert_array_equal(table["predict"], r.prediction.numpy())
    np.testing.assert_array_equal(table["radius"].to_numpy(np.float32), r.radius.numpy())
    np.testing.assert_array_equal(table["sigma"].to_numpy(np.float32), r.sigma.numpy())  # NaN = abstained
    np.testing.assert_array_equal(table["radius_estimator"].to_numpy(np.float32),
                                  r.radius_estimator.numpy())

    task = runner.predict_task(drs.StandardSmoothing(model, 0.5), data, [0, 1, 2], n=N,
                               alpha=0.01, batch_size=64, seed=0)
    runner.run(task, tmp_path / "pred.tsv", progress=False)
    table = pd.read_csv(tmp_path / "pred.tsv", sep="\t")
    assert list(table.columns) == ["idx", "label", "predict", "correct", "time"]
    expected = drs.predict(model, data.x[:3], 0.5, n=N, alpha=0.01, seed=0, ids=[0, 1, 2])
    np.testing.assert_array_equal(table["predict"], expected.numpy())
