#!/usr/bin/env python
"""Dual RS's cost over standard RS on a test set's routing mix (results/DUAL_COST.md).

    python -P scripts/dual_cost.py --n 2000              # 500 test images, ~3 min alone
    python -P scripts/dual_cost.py --n 10000             # ~12 min alone
    python -P scripts/dual_cost.py --n 500 --n-test 20 --out /tmp/c.md   # quick check
    python -P scripts/dual_cost.py --n 2000 --dataset fashion-mnist --n-test 80
    python -P scripts/dual_cost.py --n 2000 --n-test 200 --shared-noise

Test images 0..n_test-1 of the dataset's test split (``data.load_dataset``; mnist5k: the
embedded split; noise keyed by the test index, seed 0, n0 = 100, alpha = 0.001, batch_size
1000), in chunks of CHUNK inputs (``--chunk``). Per chunk, standard RS with the dataset's sigma 0.5 expert
and the dataset's default Dual RS (``models.load_default_dual(dataset=...)``, default
options) are timed back to back, their order alternating between chunks, so that a shared
machine's changing load hits both alike (each called once on two inputs before, untimed, so
that neither pays a first call's kernel compiling or cache loading); the ratio is total Dual time over total standard
time. Certificates do not depend on the chunking (noise keyed by test index, every decision
per input). Certified accuracy is compared with the default Dual RS row of the dataset's
results table (results/RESULTS.md, FASHION_MNIST.md, MNIST.md) at the same n when the run
covers the same images.

--shared-noise times Dual RS's plain procedure (estimator_rounds=1, share_pass=False: the
estimator and every classifier on passes of their own) with separate noise against shared
noise (``share_noise=True``, ``dualrs_fast.shared_noise``) instead, the same way.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import torch

import dualrs_fast as drs
from dualrs_fast.data import load_dataset
from dualrs_fast.models import (DEFAULT_ESTIMATORS, estimator_weights_path,
                                load_default_classifier, load_default_dual)
from dualrs_fast.training import REPORTED_RADII

ROOT = Path(__file__).resolve().parents[1]
N0, ALPHA, SEED, BATCH, CHUNK, STANDARD_SIGMA = 100, 0.001, 0, 1000, 50, 0.5


#: each dataset's results table (written by scripts/results.py)
RESULTS = {"mnist5k": "RESULTS.md", "fashion-mnist": "FASHION_MNIST.md", "mnist": "MNIST.md"}


def reference_accuracy(results_md: Path, n: int, arch: str, n_test: int):
    """The default Dual RS row (``arch`` estimator, experts) of a results table at budget n,
    None if absent or if the table covers other images than test images 0..n_test-1."""
    text = results_md.read_text() if results_md.exists() else ""
    covered = re.search(r"Test images 0\.\.(\d+)|First (\d+) held-out", text)
    if covered is None or int(covered.group(1) or int(covered.group(2)) - 1) != n_test - 1:
        return None
    section = text.split(f"### n = {n:,}")
    if len(section) < 2:
        return None
    for line in section[1].splitlines():
        if line.startswith("| Dual RS") and arch in line and "noise-conditioned" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            return [float(c) for c in cells[1:1 + len(REPORTED_RADII)]]
    return None


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def weights_file(path: Path) -> str:
    """A committed weights file's path from the package's weights/ folder on."""
    return str(Path(*path.parts[len(path.parts) - 1 - path.parts[::-1].index("weights"):]))


def comparison(args, dual, expert, kw):
    """[(label, certify(xs, ids_s))]: the baseline first, then the Dual RS call measured."""
    if args.shared_noise:
        plain = dict(estimator_rounds=1, share_pass=False, **kw)
        return [("Dual RS plain, separate noise",
                 lambda xs, ids_s: dual.certify(xs, ids=ids_s, **plain)),
                ("Dual RS plain, shared noise",
                 lambda xs, ids_s: dual.certify(xs, ids=ids_s, share_noise=True, **plain))]
    return [(f"standard RS, σ = {STANDARD_SIGMA:g}",
             lambda xs, ids_s: drs.certify(expert, xs, sigma=STANDARD_SIGMA, ids=ids_s, **kw)),
            ("Dual RS (default)", lambda xs, ids_s: dual.certify(xs, ids=ids_s, **kw))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--dataset", default="mnist5k", choices=sorted(RESULTS))
    p.add_argument("--shared-noise", action="store_true",
                   help="time the plain procedure with separate against shared noise")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=CHUNK,
                   help="inputs per certify call (Dual RS's fixed costs are per call and pass)")
    p.add_argument("--out", type=Path)
    p.add_argument("--save", type=Path,
                   help="torch.save the measured call's per-input fields (to compare runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x_test, y_test = load_dataset(args.dataset, "test")
    x, y = x_test[:args.n_test], y_test[:args.n_test]
    ids = torch.arange(x.shape[0])
    arch = DEFAULT_ESTIMATORS[args.dataset]
    dual = load_default_dual(dataset=args.dataset)
    expert = load_default_classifier(STANDARD_SIGMA, dataset=args.dataset)
    compared = (f"{args.dataset}: default estimator {arch} "
                f"({type(dual.estimator).__name__}, "
                f"dualrs_fast/{weights_file(estimator_weights_path(arch, dataset=args.dataset))}, "
                f"estimator σ = {dual.estimator_sigma:g}, levels "
                f"{', '.join(f'{s:g}' for s in dual.sigmas)})")
    compared += ("; separate against shared noise" if args.shared_noise else
                 f"; standard RS at σ = {STANDARD_SIGMA:g}")
    print(compared, flush=True)
    calls = comparison(args, dual, expert, dict(n0=N0, n=args.n, alpha=ALPHA, seed=SEED,
                                                batch_size=BATCH))
    names = [name for name, _ in calls]
    for _, call in calls:  # untimed: a first call's kernel compiling or cache loading
        call(x[:2], ids[:2])
    load_before = os.getloadavg()
    seconds, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)  # CPU: process time
    parts = {name: [] for name in names}
    for k, start in enumerate(range(0, x.shape[0], args.chunk)):
        xs, ids_s = x[start:start + args.chunk], ids[start:start + args.chunk]
        for name, call in (calls if k % 2 == 0 else calls[::-1]):
            t, c = time.perf_counter(), time.process_time()
            parts[name].append(call(xs, ids_s))
            seconds[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - c
        print(f"inputs {start + xs.shape[0]}: {names[1]} / {names[0]} so far "
              f"{seconds[names[1]] / seconds[names[0]]:.3f} "
              f"(CPU time {cpu[names[1]] / cpu[names[0]]:.3f})", flush=True)
    load_after = os.getloadavg()
    fields = ("prediction", "radius", "level", "shared", "estimator_samples", "radius_estimator",
              "samples", "count_estimator", "radius_classifier", "estimator_class")
    cat = {f: torch.cat([getattr(r, f) for r in parts[names[1]]]) for f in fields}

    def accuracy(results):
        radius = torch.cat([r.radius for r in results])
        correct = torch.cat([r.prediction for r in results]) == y
        return [float(((radius >= r) & correct).double().mean()) for r in REPORTED_RADII]
    table = RESULTS[args.dataset]
    reference = None if args.shared_noise else reference_accuracy(
        ROOT / "results" / table, args.n, arch, x.shape[0])
    command = (f"python -P scripts/dual_cost.py --n {args.n}"
               + (f" --n-test {args.n_test}" if args.n_test != 500 else "")
               + (f" --dataset {args.dataset}" if args.dataset != "mnist5k" else "")
               + (" --shared-noise" if args.shared_noise else "")
               + (f" --threads {args.threads}" if args.threads != 2 else "")
               + (f" --chunk {args.chunk}" if args.chunk != CHUNK else ""))
    lines = [f"### n = {args.n:,}", "", compared + ".", "",
             f"Test images 0..{x.shape[0] - 1}; {cpu_name()}, {os.cpu_count()} cores, "
             f"{args.threads} threads; load average (1/5/15 min) before "
             + " / ".join(f"{v:.1f}" for v in load_before) + ", after "
             + " / ".join(f"{v:.1f}" for v in load_after) + f"; `{command}`.", "",
             "| | wall s | wall-time ratio | CPU s | CPU-time ratio |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {seconds[name]:.0f} | {seconds[name] / seconds[names[0]]:.3f} | "
              f"{cpu[name]:.0f} | {cpu[name] / cpu[names[0]]:.3f} |" for name in names]
    borrowed = cat["estimator_class"] & ~cat["shared"]  # class from the estimator, own level
    lines += ["", "| level | inputs | shared pass | class from the estimator's selection, "
              "not shared | estimator samples / input (mean) |", "| --- | --- | --- | --- | --- |"]
    for level in range(-1, len(dual.sigmas)):
        at = cat["level"] == level
        if at.any():
            name = "abstain" if level < 0 else f"σ = {dual.sigmas[level]:g}"
            lines.append(f"| {name} | {int(at.sum())} | {int((cat['shared'] & at).sum())} | "
                         f"{int((borrowed & at).sum())} | "
                         f"{cat['estimator_samples'][at].double().mean():,.0f} |")
    lines.append(f"| all | {x.shape[0]} | {int(cat['shared'].sum())} | {int(borrowed.sum())} | "
                 f"{cat['estimator_samples'].double().mean():,.0f} |")
    if not args.shared_noise:  # standard RS draws n0 + n per input
        ratio = cat["samples"].double().sum() / ((N0 + args.n) * x.shape[0])
        lines += ["", f"Samples over standard RS: {ratio:.4f}."]
    rows = [(names[1], accuracy(parts[names[1]]))]
    if args.shared_noise:  # the estimator's votes, hence R_ve, are the same by construction
        rows.append((names[0], accuracy(parts[names[0]])))
        same = torch.equal(cat["radius_estimator"], torch.cat(
            [r.radius_estimator for r in parts[names[0]]]))
        lines += ["", f"R_ve identical with separate and shared noise: {same}."]
    elif reference:
        rows.append((f"Dual RS, results/{table}", reference))
    lines += ["", "| certified accuracy | " + " | ".join(f"r={r:g}" for r in REPORTED_RADII)
              + " |", "|---" * (len(REPORTED_RADII) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(f"{a:.3f}" for a in acc) + " |" for label, acc in rows]
    if len(rows) == 2:
        lines.append("| difference | " + " | ".join(
            f"{a - b:+.3f}" for a, b in zip(rows[0][1], rows[1][1])) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.save:
        torch.save(dict(cat, label=y), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
