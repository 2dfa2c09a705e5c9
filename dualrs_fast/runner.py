"""Certification runs over a dataset: one log row per input, resumable, sharded across ranks.

A run is a :class:`Task`: the log's columns, the config that determines every row, the
dataset indices to cover and a function computing the rows of some indices. Each input's
noise is keyed by its dataset index (``ids=``), so a row is the same whether it is computed
alone, in a chunk, after a restart or on another rank: resuming and sharding are exact.

Files of a run writing LOG:

- ``LOG``: the rows (Cohen's tab-separated format), appended chunk by chunk;
- ``LOG.args.json``: the config (a restart with a different config is refused) and the
  seal of LOG's rows (``log_seal``), updated after each chunk;
- ``LOG.rank{r}-of-{w}`` and its seal ``LOG.rank{r}-of-{w}.seal.json``: rank r's rows
  during a multi-process run; rank 0 merges them into LOG ordered by idx at the end (or at
  the next start, if the run was killed);
- ``LOG.lock``: held while a run writes LOG, so two runs never interleave rows.

A resume reports rows it does not recompute, so it trusts none blindly: every row is
checked (``log_rows``) and must lie in the part of its file the seal covers.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import log_rows
from .log_seal import Seal, SealError, sealed_length
from .logs import COLUMNS, format_row
from .progress import interactive, progress_bar
from .sequential_radii import check_radii

PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")  # Cohen's predict.py log
RADII_COLUMNS = ("samples",)  # appended to a certify log's columns by certify_radii_task


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
    check_row: Optional[Callable[[List[str]], int]] = None  # raises ValueError for a row
                                                  # this task could not have written


def select_indices(size: int, skip: int = 1, max_index: Optional[int] = None) -> List[int]:
    """Like Cohen et al.'s certify.py: every ``skip``-th index below ``max_index``."""
    if skip < 1:
        raise ValueError(f"--skip must be >= 1, got {skip}")
    if max_index is not None and max_index < 1:
        raise ValueError(f"--max must be >= 1, got {max_index}")
    stop = size if max_index is None else min(size, max_index)
    return list(range(0, stop, skip))


# --------------------------------------------------------------------------- row computation


def _certify_rules(smoother, dataset, indices, columns, num_classes, n, alpha, options):
    """The checks a resumed certify row of this task must pass (log_rows)."""
    if num_classes is None:
        num_classes = smoother.output_classes(dataset.x)
    return smoother.row_rules(columns, dataset.y.tolist(), indices, num_classes, n, alpha,
                              **options)


def _certify_rows(smoother, ids, labels, r, seconds: float, samples: bool = False) -> List[str]:
    """Log rows of a certify result: the smoother's own cells (``log_cells``), and with
    ``samples`` the samples drawn (certify_radii)."""
    rows = []
    for k, i in enumerate(ids):
        extra = smoother.log_cells(r, k)
        if samples:
            extra["samples"] = int(r.samples[k])
        rows.append(format_row(i, int(labels[k]), int(r.prediction[k]), float(r.radius[k]),
                               seconds, **extra))
    return rows


def certify_task(smoother, dataset, indices, *, n0: int, n: int, alpha: float,
                 batch_size: int, seed: int, options: Optional[dict] = None, config=None,
                 info=None, num_classes: Optional[int] = None) -> Task:
    """CERTIFY every input with ``smoother`` (``smoothers``: StandardSmoothing, DualSmoothing,
    CascadeSmoothing), whose ``log_columns`` follow Cohen's. options: the smoother's own
    certify options (e.g. Dual RS's n0_estimator, n_estimator). num_classes: the model's
    output width (default: measured on one input), which bounds the predictions a resumed
    log may hold."""
    options = options or {}

    def compute(ids: List[int], progress: bool) -> List[str]:
        x, labels = dataset.x[ids], dataset.y[ids]
        start = time.perf_counter()
        r = smoother.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                             ids=ids, progress=progress, **options)
        seconds = (time.perf_counter() - start) / len(ids)  # a chunk's time, split evenly
        return _certify_rows(smoother, ids, labels, r, seconds)

    columns = COLUMNS + smoother.log_columns
    rules = _certify_rules(smoother, dataset, indices, columns, num_classes, n, alpha, options)
    return Task(columns, config or {}, list(indices), compute,
                smoother.samples_per_input(n0, n, **options), info or {}, check_row=rules.check)


def certify_radii_task(smoother, dataset, indices, *, radii, n0: int, n: int, alpha: float,
                       batch_size: int, seed: int, options: Optional[dict] = None, config=None,
                       info=None) -> Task:
    """``smoother.certify_radii`` on every input (n = n_max): radius is the largest certified
    grid radius, and a last column ``samples`` counts the noisy samples drawn. A
    DualSmoothing's columns sigma (NaN where the classifier did not run), radius_estimator
    and radius_classifier hold the largest grid radius each cleared (-1 where none)."""
    options = options or {}
    per_input = smoother.samples_per_input(n0, n, **options)

    def compute(ids: List[int], progress: bool) -> List[str]:
        x, labels = dataset.x[ids], dataset.y[ids]
        start = time.perf_counter()
        r = smoother.certify_radii(x, radii, n0=n0, n_max=n, alpha=alpha,
                                   batch_size=batch_size, seed=seed, ids=ids, progress=progress,
                                   **options)
        seconds = (time.perf_counter() - start) / len(ids)  # a chunk's time, split evenly
        return _certify_rows(smoother, ids, labels, r, seconds, samples=True)

    columns = COLUMNS + smoother.log_columns + RADII_COLUMNS
    rules = log_rows.with_radii(_certify_rules(smoother, dataset, indices, columns, None, n,
                                               alpha, options), check_radii(radii), per_input)
    return Task(columns, config or {}, list(indices), compute, per_input, info or {},
                check_row=rules.check)


def predict_task(smoother, dataset, indices, *, n: int, alpha: float, batch_size: int,
                 seed: int, config=None, info=None, num_classes: Optional[int] = None) -> Task:
    """PREDICT every input with ``smoother`` (Cohen's predict.py log: idx label predict
    correct time)."""

    def compute(ids: List[int], progress: bool) -> List[str]:
        x, labels = dataset.x[ids], dataset.y[ids]
        start = time.perf_counter()
        pred = smoother.predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed, ids=ids,
                                progress=progress)
        seconds = (time.perf_counter() - start) / len(ids)
        return [f"{i}\t{int(labels[k])}\t{int(pred[k])}\t{int(int(pred[k]) == int(labels[k]))}"
                f"\t{seconds:.6f}" for k, i in enumerate(ids)]

    if num_classes is None:
        num_classes = smoother.output_classes(dataset.x)
    rules = log_rows.predict_rules(PREDICT_COLUMNS, dataset.y.tolist(), indices, num_classes)
    return Task(PREDICT_COLUMNS, config or {}, list(indices), compute,
                smoother.predict_samples_per_input(n), info or {}, check_row=rules.check)


# --------------------------------------------------------------------------- log files


def sidecar_path(log: Path) -> Path:
    return log.with_name(log.name + ".args.json")


def shard_path(log: Path, rank: int, world: int) -> Path:
    return log.with_name(f"{log.name}.rank{rank}-of-{world}")


def shard_paths(log: Path) -> List[Path]:
    pattern = re.compile(re.escape(log.name) + r"\.rank[0-9]+-of-[0-9]+")
    return sorted(Path(p) for p in glob.glob(glob.escape(str(log)) + ".rank*-of-*")
                  if pattern.fullmatch(Path(p).name))


def _sans_time(line: str, columns: Sequence[str]) -> list:
    cells = line.split("\t")
    del cells[list(columns).index("time")]
    return cells


def seal_path(shard: Path) -> Path:
    """Where a shard's seal lives (LOG's own is in LOG.args.json)."""
    return shard.with_name(shard.name + ".seal.json")


_CORRUPT = "the log is corrupt or was edited (use --overwrite or another --out)"


def parse_rows(data: bytes, columns: Sequence[str], path, check=None) -> Dict[int, str]:
    """Rows of a log's bytes (whole lines) keyed by idx, in file order. ``check(cells)``
    raises ValueError for a row this run could not have written (``log_rows.RowRules``);
    any bad row ends in a RunError naming its line."""
    lines = data.split(b"\n")[:-1]
    if not lines:
        return {}
    if lines[0].decode("ascii", "replace") != "\t".join(columns):
        raise RunError(f"{path} has columns {lines[0].decode('ascii', 'replace').split()}, "
                       f"expected {list(columns)}: not a log of this kind of run")
    rows: Dict[int, str] = {}
    for lineno, raw in enumerate(lines[1:], start=2):
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise RunError(f"{path}, line {lineno}: non-ASCII characters in "
                           f"{raw.decode('utf-8', 'replace')!r}; {_CORRUPT}") from None
        cells = line.split("\t")
        if len(cells) != len(columns) or not re.fullmatch(r"0|[1-9][0-9]*", cells[0]):
            raise RunError(f"{path}, line {lineno}: malformed row {line!r}; {_CORRUPT}")
        if check is not None:
            try:
                check(cells)
            except ValueError as exc:
                raise RunError(f"{path}, line {lineno}: {exc} in {line!r}; {_CORRUPT}") from None
        idx = int(cells[0])
        if idx in rows:
            raise RunError(f"{path}, line {lineno}: a second row for idx {idx}; {_CORRUPT}")
        rows[idx] = line
    return rows


def read_rows(path: Path, columns: Sequence[str], check=None) -> Dict[int, str]:
    """Rows of a log file keyed by idx (a last line without its newline is ignored); no seal
    is checked."""
    data = path.read_bytes()
    return parse_rows(data[:data.rfind(b"\n") + 1], columns, path, check)


def _merge_row(rows: Dict[int, str], idx: int, line: str, columns, where) -> None:
    old = rows.get(idx)
    if old is None:
        rows[idx] = line
    elif _sans_time(old, columns) != _sans_time(line, columns):
        # never pick one silently: two different certificates for one input
        raise RunError(f"conflicting rows for idx {idx} in {where}:\n  {old}\n  {line}")


def _config_of(task: Task) -> dict:
    return json.loads(json.dumps(task.config, sort_keys=True))  # tuples -> lists, etc.


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: a kill leaves the old or the new file


def _write_sidecar(log: Path, task: Task, seal: Optional[dict], previous: Optional[dict] = None
                   ) -> None:
    value = {"config": _config_of(task), "info": task.info}
    if seal is not None:
        value["seal"] = seal
    if previous is not None:  # the seal of LOG's content while LOG is being replaced
        value["previous_seal"] = previous
    _write_json(sidecar_path(log), value)


def _sealed_rows(path: Path, task: Task, sealed_in: Path, *records) -> tuple:
    """The rows of ``path`` that one of the seal ``records`` (kept in ``sealed_in``) covers.
    Every whole line is checked first (a bad row is refused with its line number); rows
    after the sealed length (written after the last seal, or appended by someone else) and a
    half-written last line are then cut off, to be recomputed. -> (rows, Seal)."""
    data = path.read_bytes()
    data = data[:data.rfind(b"\n") + 1]
    parse_rows(data, task.columns, path, task.check_row)
    try:
        seal = sealed_length(data, _config_of(task), *records)
    except SealError:
        raise RunError(f"{path} does not match its seal in {sealed_in.name}: the rows or the "
                       "recorded arguments were edited, swapped or cut since the run that "
                       "wrote them (a log is trusted only as far as the disk it is stored on); "
                       "use --overwrite or another --out") from None
    if seal.length < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(seal.length)
    rows = parse_rows(data[:seal.length], task.columns, path, task.check_row)
    return rows, seal


def _shard_seal(shard: Path) -> Optional[dict]:
    try:
        return json.loads(seal_path(shard).read_text())["seal"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # never sealed (killed at once) or unreadable: its rows are recomputed


def consolidate(log: Path, task: Task) -> tuple:
    """Check LOG and its shards against their seals and row by row, merge the shards into
    LOG (ordered by idx), make sure LOG has its header and is sealed. -> (rows, Seal)."""
    rows, seal = {}, None
    if log.exists():
        try:
            recorded = json.loads(sidecar_path(log).read_text())
        except (OSError, ValueError) as exc:
            raise RunError(f"{sidecar_path(log)} is unreadable ({exc}); pass --overwrite or "
                           "another --out") from None
        if "seal" not in recorded:
            raise RunError(f"{sidecar_path(log).name} holds no seal of {log}'s rows (written by "
                           "an older dualrs_fast?), so they cannot be trusted on resume; pass "
                           "--overwrite or another --out")
        rows, seal = _sealed_rows(log, task, sidecar_path(log), recorded["seal"],
                                  recorded.get("previous_seal"))
    shards = shard_paths(log)
    for shard in shards:
        record = _shard_seal(shard)
        if record is None:  # its rows are recomputed, but a bad one is still reported
            read_rows(shard, task.columns, task.check_row)
            continue
        for idx, line in _sealed_rows(shard, task, seal_path(shard), record)[0].items():
            _merge_row(rows, idx, line, task.columns, f"{log} and {shard}")
    if seal is None or shards or list(rows) != sorted(rows):
        content = "".join(line + "\n" for line in
                          ["\t".join(task.columns)] + [rows[i] for i in sorted(rows)]).encode()
        new = Seal(_config_of(task)).update(content)
        _write_sidecar(log, task, new.record(), seal.record() if seal else None)
        tmp = log.with_name(log.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, log)  # atomic: a kill leaves the old or the new log (both sealed)
        _write_sidecar(log, task, new.record())
        seal = new
    for shard in shards:
        shard.unlink()
        seal_path(shard).unlink(missing_ok=True)
    return rows, seal


def _differences(old, new, prefix=""):
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"  {prefix}{key}: {a!r} in the log, {b!r} now"


def _check_or_record_config(log: Path, task: Task, overwrite: bool) -> None:
    sidecar = sidecar_path(log)
    config = _config_of(task)
    if overwrite:
        for p in [log, *shard_paths(log), sidecar]:
            p.unlink(missing_ok=True)
        for p in glob.glob(glob.escape(str(log)) + ".rank*-of-*.seal.json"):
            os.unlink(p)
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
    _write_sidecar(log, task, None)  # LOG and its seal come next (consolidate)


def recorded_seed(log: Path) -> Optional[int]:
    """The seed recorded for LOG when there is a log to resume (LOG or its shards exist);
    None otherwise or when the record is unusable (the resume check then says why)."""
    if not (log.exists() or shard_paths(log)):
        return None
    try:
        seed = json.loads(sidecar_path(log).read_text())["config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        return None
    return seed


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


broadcast_object = _broadcast  # rank 0's value on every rank


def _all_gather(value) -> list:
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class _SealedWriter:
    """Appends rows to a log file and re-seals it after each chunk (bytes first, then the
    seal: a kill in between leaves rows after the sealed length, which are recomputed)."""

    def __init__(self, path: Path, seal: Seal, save_seal: Callable[[dict], None]):
        self.path, self.seal, self.save_seal = path, seal, save_seal

    def write(self, lines: List[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
        self.seal.update(data)
        self.save_seal(self.seal.record())


def _compute_into(task: Task, indices: List[int], out: _SealedWriter, chunk: int,
                  progress: bool, desc: str) -> None:
    """Certify ``indices`` in chunks, appending and sealing each chunk's rows."""
    if not indices:
        return
    bar = progress_bar(len(indices), desc, "inputs", progress)
    inner = progress and interactive()  # per-chunk bars only where they redraw in place
    start, done = time.perf_counter(), 0
    try:
        for k in range(0, len(indices), chunk):
            ids = indices[k:k + chunk]
            rows = task.compute(ids, inner)
            if [int(r.split("\t", 1)[0]) for r in rows] != ids:
                raise RuntimeError("internal error: rows do not match the requested indices")
            out.write(rows)
            done += len(ids)
            rate = done * task.samples_per_input / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} samples/s")
            bar.update(len(ids))
    finally:
        bar.close()


def _shard_writer(log: Path, task: Task, rank: int, world: int) -> _SealedWriter:
    shard = shard_path(log, rank, world)
    shard.write_bytes(b"")
    writer = _SealedWriter(shard, Seal(_config_of(task)),
                           lambda record: _write_json(seal_path(shard), {"seal": record}))
    writer.write(["\t".join(task.columns)])
    return writer


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
            for i, row in zip(ids, task.compute(ids, progress and interactive())):
                print(row, flush=True)
                rows[i] = row
        return rows
    log = Path(log)
    with ExitStack() as stack:
        error, done, seal = None, [], None
        if rank == 0:
            try:
                stack.enter_context(_exclusive(log))
                _check_or_record_config(log, task, overwrite)
                rows, seal = consolidate(log, task)
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
            out = _SealedWriter(log, seal, lambda record: _write_sidecar(log, task, record))
            _compute_into(task, mine, out, chunk, progress, desc)
            return consolidate(log, task)[0]  # sorts if rows were filled in

        failure = None
        try:
            if mine:
                out = _shard_writer(log, task, rank, world)
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
                rows = consolidate(log, task)[0]
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


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker when the process that spawned it dies: a parent killed by SIGKILL
    cannot stop its workers, which would go on certifying into the shard files."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        try:  # the kernel sends SIGKILL when the parent dies
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent_pid:  # it died before we could ask
        os._exit(1)

    def watch():  # portable backup: an orphan is re-parented, so its parent pid changes
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    import threading
    threading.Thread(target=watch, name="dualrs-parent-watchdog", daemon=True).start()


def _spawned(rank: int, world: int, init_file: str, threads: int, target, args,
             parent_pid: Optional[int] = None) -> None:
    import torch.distributed as dist
    _exit_with_parent(os.getppid() if parent_pid is None else parent_pid)
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
        workers = mp.start_processes(
            _spawned, args=(world, os.path.join(tmp, "init"), threads, target, tuple(args),
                            os.getpid()), nprocs=world, join=False, start_method="spawn")
        try:
            while not workers.join():
                pass
        except KeyboardInterrupt:  # the workers ignore Ctrl-C (the CLI's _rank_main): end them
            for process in workers.processes:
                process.kill()
                process.join()
            raise
