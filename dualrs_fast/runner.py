"""Certification runs over a dataset: one log row per input, resumable, sharded across ranks.

A run is a :class:`Task`: the log's columns, the config that determines every row, the
dataset indices to cover and a function computing the rows of some indices. Each input's
noise is keyed by its dataset index (``ids=``), so a row is the same whether it is computed
alone, in a chunk, after a restart or on another rank: resuming and sharding are exact.

Files of a run writing LOG:

- ``LOG``: the rows (Cohen's tab-separated format), flushed one by one;
- ``LOG.args.json``: the config; a restart with a different config is refused;
- ``LOG.rank{r}-of-{w}``: rank r's rows during a multi-process run; rank 0 merges them
  into LOG ordered by idx at the end (or at the next start, if the run was killed);
- ``LOG.lock``: held while a run writes LOG, so two runs never interleave rows.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import smoothing
from .dual import DualSmoothing
from .logs import COLUMNS, format_row
from .sequential_radii import certify_radii

DUAL_COLUMNS = COLUMNS + ("sigma", "radius_estimator", "radius_classifier")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")  # Cohen's predict.py log


class RunError(RuntimeError):
    """The run cannot go on as asked (conflicting log, corrupt log, a failed rank...)."""


class RelayedError(RunError):
    """Another rank failed and reports why itself; this rank only stops."""


@dataclass
class Task:
    columns: Sequence[str]
    config: dict                                  # determines every row; compared on resume
    indices: List[int]                            # dataset indices to cover, ascending
    compute: Callable[[List[int], bool], List[str]]  # (indices, progress) -> rows, in order
    samples_per_input: int = 0                    # for the samples/s readout
    info: dict = field(default_factory=dict)      # recorded, never compared (paths, version)
    resumed: int = 0                              # set by run(): rows found in an earlier log


def select_indices(size: int, skip: int = 1, max_index: Optional[int] = None) -> List[int]:
    """Like Cohen et al.'s certify.py: every ``skip``-th index below ``max_index``."""
    if skip < 1:
        raise ValueError(f"--skip must be >= 1, got {skip}")
    if max_index is not None and max_index < 1:
        raise ValueError(f"--max must be >= 1, got {max_index}")
    stop = size if max_index is None else min(size, max_index)
    return list(range(0, stop, skip))


# --------------------------------------------------------------------------- row computation


def _certify_rows(ids, labels, r, seconds: float, dual: bool, samples: bool = False) -> List[str]:
    """Log rows of a certify result: Dual RS adds sigma, radius_estimator, radius_classifier;
    ``samples`` the samples drawn (certify_radii)."""
    rows = []
    for k, i in enumerate(ids):
        extra = {}
        if dual:
            extra = dict(sigma=float(r.sigma[k]), radius_estimator=float(r.radius_estimator[k]),
                         radius_classifier=float(r.radius_classifier[k]))
        if samples:
            extra["samples"] = int(r.samples[k])
        rows.append(format_row(i, int(labels[k]), int(r.prediction[k]), float(r.radius[k]),
                               seconds, **extra))
    return rows


def certify_task(smoother, dataset, indices, *, sigma=None, n0: int, n: int, alpha: float,
                 batch_size: int, seed: int, n0_estimator=None, n_estimator=None,
                 config=None, info=None) -> Task:
    """CERTIFY every input; ``smoother`` is a model (standard RS at ``sigma``) or a
    DualSmoothing (adds columns sigma, radius_estimator, radius_classifier)."""
    dual = isinstance(smoother, DualSmoothing)
    per_input = n0 + n + ((n0_estimator or n0) + (n_estimator or n) if dual else 0)

    def compute(ids: List[int], progress: bool) -> List[str]:
        x, labels = dataset.x[ids], dataset.y[ids]
        start = time.perf_counter()
        if dual:
            r = smoother.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                                 ids=ids, n0_estimator=n0_estimator, n_estimator=n_estimator,
                                 progress=progress)
        else:
            r = smoothing.certify(smoother, x, sigma, n0=n0, n=n, alpha=alpha,
                                  batch_size=batch_size, seed=seed, ids=ids, progress=progress)
        seconds = (time.perf_counter() - start) / len(ids)  # a chunk's time, split evenly
        return _certify_rows(ids, labels, r, seconds, dual)

    return Task(DUAL_COLUMNS if dual else COLUMNS, config or {}, list(indices), compute,
                per_input, info or {})


RADII_COLUMNS = ("samples",)  # appended to COLUMNS / DUAL_COLUMNS by certify_radii_task


def certify_radii_task(smoother, dataset, indices, *, radii, sigma=None, n0: int, n: int,
                       alpha: float, batch_size: int, seed: int, n0_estimator=None,
                       n_estimator=None, config=None, info=None) -> Task:
    """``sequential_radii.certify_radii`` on every input (n = n_max): radius is the largest
    certified grid radius, and a last column ``samples`` counts the noisy samples drawn. With
    a DualSmoothing also sigma (NaN where the classifier did not run), radius_estimator and
    radius_classifier (the largest grid radius each cleared, -1 where none)."""
    dual = isinstance(smoother, DualSmoothing)
    per_input = n0 + n + ((n0_estimator or n0) + (n_estimator or n) if dual else 0)
    options = dict(n0_estimator=n0_estimator, n_max_estimator=n_estimator) if dual else dict(
        sigma=sigma)

    def compute(ids: List[int], progress: bool) -> List[str]:
        x, labels = dataset.x[ids], dataset.y[ids]
        start = time.perf_counter()
        r = certify_radii(smoother, x, radii, n0=n0, n_max=n, alpha=alpha, batch_size=batch_size,
                          seed=seed, ids=ids, progress=progress, **options)
        seconds = (time.perf_counter() - start) / len(ids)  # a chunk's time, split evenly
        return _certify_rows(ids, labels, r, seconds, dual, samples=True)

    return Task((DUAL_COLUMNS if dual else COLUMNS) + RADII_COLUMNS, config or {},
                list(indices), compute, per_input, info or {})


def predict_task(smoother, dataset, indices, *, sigma=None, n: int, alpha: float,
                 batch_size: int, seed: int, config=None, info=None) -> Task:
    """PREDICT every input (Cohen's predict.py log: idx label predict correct time)."""
    dual = isinstance(smoother, DualSmoothing)

    def compute(ids: List[int], progress: bool) -> List[str]:
        x, labels = dataset.x[ids], dataset.y[ids]
        start = time.perf_counter()
        if dual:
            pred = smoother.predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                                    ids=ids, progress=progress)
        else:
            pred = smoothing.predict(smoother, x, sigma, n=n, alpha=alpha,
                                     batch_size=batch_size, seed=seed, ids=ids,
                                     progress=progress)
        seconds = (time.perf_counter() - start) / len(ids)
        return [f"{i}\t{int(labels[k])}\t{int(pred[k])}\t{int(int(pred[k]) == int(labels[k]))}"
                f"\t{seconds:.6f}" for k, i in enumerate(ids)]

    return Task(PREDICT_COLUMNS, config or {}, list(indices), compute,
                n * (2 if dual else 1), info or {})


# --------------------------------------------------------------------------- log files


def sidecar_path(log: Path) -> Path:
    return log.with_name(log.name + ".args.json")


def shard_path(log: Path, rank: int, world: int) -> Path:
    return log.with_name(f"{log.name}.rank{rank}-of-{world}")


def shard_paths(log: Path) -> List[Path]:
    return sorted(Path(p) for p in glob.glob(glob.escape(str(log)) + ".rank*-of-*"))


def _sans_time(line: str, columns: Sequence[str]) -> list:
    cells = line.split("\t")
    del cells[list(columns).index("time")]
    return cells


def read_rows(path: Path, columns: Sequence[str], repair: bool = False) -> Dict[int, str]:
    """Rows of a log keyed by idx, in file order. A last line without its newline (the run
    was killed while writing it) is dropped, and cut off the file when ``repair`` is set."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    lines = data[:end].decode().split("\n")[:-1]
    if not lines:
        return {}
    if tuple(lines[0].split("\t")) != tuple(columns):
        raise RunError(f"{path} has columns {lines[0].split()}, expected {list(columns)}: "
                       "not a log of this kind of run")
    rows: Dict[int, str] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(columns) or not cells[0].isdigit():
            raise RunError(f"{path}, line {lineno}: malformed row {line!r}; the log is corrupt "
                           "(use --overwrite or another --out)")
        _merge_row(rows, int(cells[0]), line, columns, path)
    return rows


def _merge_row(rows: Dict[int, str], idx: int, line: str, columns, where) -> None:
    old = rows.get(idx)
    if old is None:
        rows[idx] = line
    elif _sans_time(old, columns) != _sans_time(line, columns):
        # never pick one silently: two different certificates for one input
        raise RunError(f"conflicting rows for idx {idx} in {where}:\n  {old}\n  {line}")


def _write_sorted(log: Path, columns: Sequence[str], rows: Dict[int, str]) -> None:
    tmp = log.with_name(log.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("\t".join(columns) + "\n")
        for idx in sorted(rows):
            f.write(rows[idx] + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, log)  # atomic: a kill leaves either the old or the new log


def consolidate(log: Path, columns: Sequence[str]) -> Dict[int, str]:
    """Merge shard files into LOG (ordered by idx), drop a partial last line, make sure LOG
    has its header. -> all rows."""
    rows = read_rows(log, columns, repair=True) if log.exists() else {}
    shards = shard_paths(log)
    for shard in shards:
        for idx, line in read_rows(shard, columns, repair=True).items():
            _merge_row(rows, idx, line, columns, f"{log} and {shard}")
    if shards or not log.exists() or log.stat().st_size == 0 or list(rows) != sorted(rows):
        _write_sorted(log, columns, rows)
    for shard in shards:
        shard.unlink()
    return rows


def _differences(old, new, prefix=""):
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"  {prefix}{key}: {a!r} in the log, {b!r} now"


def _check_or_record_config(log: Path, task: Task, overwrite: bool) -> None:
    sidecar = sidecar_path(log)
    config = json.loads(json.dumps(task.config, sort_keys=True))  # tuples -> lists, etc.
    if overwrite:
        for p in [log, *shard_paths(log), sidecar]:
            p.unlink(missing_ok=True)
    elif log.exists() or shard_paths(log):
        if not sidecar.exists():
            raise RunError(f"{log} exists but {sidecar.name} (its recorded arguments) does not, "
                           "so it cannot be resumed safely; pass --overwrite or another --out")
        try:
            recorded = json.loads(sidecar.read_text())["config"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{sidecar} is unreadable ({exc}); pass --overwrite or another "
                           "--out") from None
        if recorded != config:
            raise RunError(f"{log} was written with different arguments:\n"
                           + "\n".join(_differences(recorded, config))
                           + "\nrerun with the log's arguments to resume it, or pass "
                             "--overwrite or another --out")
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps({"config": config, "info": task.info}, indent=2, sort_keys=True)
                   + "\n")
    os.replace(tmp, sidecar)


@contextmanager
def _exclusive(log: Path):
    """An flock on LOG.lock for the run's duration (released by the OS if we are killed)."""
    import fcntl
    lock = log.with_name(log.name + ".lock")
    log.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lock, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunError(f"{log} is being written by another run (it holds {lock.name}); wait "
                           "for it or choose another --out") from None
        try:  # the previous holder may have unlinked the file we locked: lock the new one
            if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        f.close()


# --------------------------------------------------------------------------- running


def rank_and_world():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(value):
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(value) -> list:
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _compute_into(task: Task, indices: List[int], out, chunk: int, progress: bool,
                  desc: str) -> None:
    """Certify ``indices`` in chunks, writing and flushing each row to the open file ``out``."""
    if not indices:
        return
    bar = tqdm(total=len(indices), unit="input", desc=desc, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    start, done = time.perf_counter(), 0
    try:
        for k in range(0, len(indices), chunk):
            ids = indices[k:k + chunk]
            rows = task.compute(ids, progress)
            if [int(r.split("\t", 1)[0]) for r in rows] != ids:
                raise RuntimeError("internal error: rows do not match the requested indices")
            for row in rows:
                out.write(row + "\n")
                out.flush()
            done += len(ids)
            rate = done * task.samples_per_input / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} samples/s")
            bar.update(len(ids))
    finally:
        bar.close()


def run(task: Task, log=None, *, chunk: int = 16, progress: bool = True,
        overwrite: bool = False) -> Dict[int, str]:
    """Compute the task's rows into ``log`` (resuming it) or, without a log, print them.

    Under torch.distributed every rank calls this: rank r computes its share r::world of the
    missing indices into its shard file and rank 0 merges one log ordered by idx. -> rows.
    """
    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    rank, world = rank_and_world()
    if log is None:
        if world > 1:
            raise RunError("a multi-process run needs a log file (--out)")
        rows = {}
        print("\t".join(task.columns), flush=True)
        for k in range(0, len(task.indices), chunk):
            ids = task.indices[k:k + chunk]
            for i, row in zip(ids, task.compute(ids, progress)):
                print(row, flush=True)
                rows[i] = row
        return rows
    log = Path(log)
    with ExitStack() as stack:
        error, done = None, []
        if rank == 0:
            try:
                stack.enter_context(_exclusive(log))
                _check_or_record_config(log, task, overwrite)
                rows = consolidate(log, task.columns)
                extra = sorted(set(rows) - set(task.indices))
                if extra:
                    raise RunError(f"{log} has rows for indices this run does not cover "
                                   f"(e.g. {extra[:5]})")
                done = sorted(rows)
            except (RunError, OSError) as exc:  # told to every rank, so none waits forever
                error = str(exc)
        if world > 1:
            error, done = _broadcast((error, done))
        if error:
            raise (RunError if rank == 0 else RelayedError)(error)
        done = set(done)
        task.resumed = len(done)
        todo = [i for i in task.indices if i not in done]
        mine = todo[rank::world]
        desc = "inputs" if world == 1 else f"inputs (rank 0 of {world})"
        if world == 1:
            with open(log, "a") as out:
                _compute_into(task, mine, out, chunk, progress, desc)
            return consolidate(log, task.columns)  # sorts if rows were filled in

        failure = None
        try:
            if mine:
                with open(shard_path(log, rank, world), "w") as out:
                    out.write("\t".join(task.columns) + "\n")
                    _compute_into(task, mine, out, chunk, progress and rank == 0, desc)
        except Exception as exc:  # noqa: BLE001 - reported to every rank below
            failure = exc
        failures = _all_gather(None if failure is None else f"rank {rank}: {failure!r}")
        if failure is not None:
            raise failure
        if any(failures):
            raise RelayedError("; ".join(f for f in failures if f))
        error, rows = None, {}
        if rank == 0:
            try:
                rows = consolidate(log, task.columns)
                missing = sorted(set(task.indices) - set(rows))
                if missing:
                    error = f"{len(missing)} rows missing after the run (e.g. {missing[:5]})"
            except RunError as exc:
                error = str(exc)
        error = _broadcast(error)
        if error:
            raise (RunError if rank == 0 else RelayedError)(error)
        return rows


# --------------------------------------------------------------------------- processes


def init_from_env(device: str = "cpu", timeout_hours: float = 24.0) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, nccl on GPU.
    -> whether this is a multi-process run."""
    import torch.distributed as dist
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # long timeout: fast ranks wait at the end for the slowest one
    dist.init_process_group(backend, timeout=timedelta(hours=timeout_hours))
    return True


def _spawned(rank: int, world: int, init_file: str, threads: int, target, args) -> None:
    import torch.distributed as dist
    os.environ.setdefault("LOCAL_RANK", str(rank))  # as under torchrun: picks cuda:rank
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(hours=24))
    try:
        target(*args)
    finally:
        dist.destroy_process_group()


def spawn(world: int, target, args=(), threads: Optional[int] = None) -> None:
    """Run ``target(*args)`` in ``world`` local processes joined by gloo (what torchrun does
    on one machine). ``target`` must be importable (a module-level function)."""
    import tempfile
    import torch.multiprocessing as mp
    threads = threads or max(1, torch.get_num_threads() // world)
    with tempfile.TemporaryDirectory(prefix="dualrs_dist_") as tmp:
        mp.spawn(_spawned, args=(world, os.path.join(tmp, "init"), threads, target, tuple(args)),
                 nprocs=world, join=True)
