#!/usr/bin/env python
"""Dual RS's cost over standard RS on a test set's routing mix (results/DUAL_COST.md).

    python -P scripts/dual_cost.py --n 2000              # 500 test images, ~3 min alone
    python -P scripts/dual_cost.py --n 10000             # ~12 min alone
    python -P scripts/dual_cost.py --n 500 --n-test 20 --out /tmp/c.md   # quick check

Test images 0..n_test-1 of the embedded MNIST-5k split (noise keyed by the test index,
seed 0, n0 = 100, alpha = 0.001, batch_size 1000), in chunks of CHUNK inputs. Per chunk,
standard RS with the sigma 0.5 expert and the embedded Dual RS (models.load_default_dual,
default options) are timed back to back, their order alternating between chunks, so that a
shared machine's changing load hits both alike; the ratio is total Dual time over total
standard time. Certificates do not depend on the chunking (noise keyed by test index, every
decision per input). Certified accuracy is compared with the Dual RS row of
results/RESULTS.md at the same n (same images, seed and ids, written before this change).
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
from dualrs_fast.data import load_default_split
from dualrs_fast.models import load_default_classifier, load_default_dual
from dualrs_fast.training import REPORTED_RADII

ROOT = Path(__file__).resolve().parents[1]
N0, ALPHA, SEED, BATCH, CHUNK, STANDARD_SIGMA = 100, 0.001, 0, 1000, 50, 0.5


def reference_accuracy(results_md: Path, n: int):
    """The Dual RS row of results/RESULTS.md at budget n (None if absent)."""
    text = results_md.read_text() if results_md.exists() else ""
    section = text.split(f"### n = {n:,}")
    if len(section) < 2:
        return None
    for line in section[1].splitlines():
        if line.startswith("| Dual RS"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            return [float(c) for c in cells[1:1 + len(REPORTED_RADII)]]
    return None


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, _, x_test, y_test = load_default_split()
    x, y = x_test[:args.n_test], y_test[:args.n_test]
    ids = torch.arange(x.shape[0])
    dual, expert = load_default_dual(), load_default_classifier(STANDARD_SIGMA)
    kw = dict(n0=N0, n=args.n, alpha=ALPHA, seed=SEED, batch_size=BATCH)
    load_before = os.getloadavg()
    seconds = {"standard": 0.0, "dual": 0.0}
    cpu = {"standard": 0.0, "dual": 0.0}  # process CPU time: less sensitive to others' load
    parts = []
    for k, start in enumerate(range(0, x.shape[0], CHUNK)):
        xs, ids_s = x[start:start + CHUNK], ids[start:start + CHUNK]
        calls = [("standard", lambda: drs.certify(expert, xs, sigma=STANDARD_SIGMA, ids=ids_s,
                                                  **kw)),
                 ("dual", lambda: dual.certify(xs, ids=ids_s, **kw))]
        for name, call in (calls if k % 2 == 0 else calls[::-1]):
            t, c = time.perf_counter(), time.process_time()
            r = call()
            seconds[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - c
            if name == "dual":
                parts.append(r)
        print(f"inputs {start + xs.shape[0]}: dual / standard so far "
              f"{seconds['dual'] / seconds['standard']:.3f} "
              f"(CPU time {cpu['dual'] / cpu['standard']:.3f})", flush=True)
    load_after = os.getloadavg()
    cat = {f: torch.cat([getattr(r, f) for r in parts]) for f in
           ("prediction", "radius", "level", "shared", "estimator_samples")}
    correct = cat["prediction"] == y
    accuracy = [float(((cat["radius"] >= r) & correct).double().mean()) for r in REPORTED_RADII]
    # results/RESULTS.md certifies test images 0..499: compare only on those same images
    reference = (reference_accuracy(ROOT / "results" / "RESULTS.md", args.n)
                 if x.shape[0] == 500 else None)
    lines = [f"### n = {args.n:,}", "",
             f"Test images 0..{x.shape[0] - 1}; {cpu_name()}, {os.cpu_count()} cores, "
             f"{args.threads} threads; load average (1/5/15 min) before "
             + " / ".join(f"{v:.1f}" for v in load_before) + ", after "
             + " / ".join(f"{v:.1f}" for v in load_after)
             + f"; `python -P scripts/dual_cost.py --n {args.n}"
             + (f" --n-test {args.n_test}" if args.n_test != 500 else "") + "`.", "",
             "| | wall s | wall-time ratio | CPU s | CPU-time ratio |",
             "| --- | --- | --- | --- | --- |",
             f"| standard RS, σ = {STANDARD_SIGMA:g} | {seconds['standard']:.0f} | 1.00 | "
             f"{cpu['standard']:.0f} | 1.00 |",
             f"| Dual RS (default) | {seconds['dual']:.0f} | "
             f"{seconds['dual'] / seconds['standard']:.3f} | {cpu['dual']:.0f} | "
             f"{cpu['dual'] / cpu['standard']:.3f} |", "",
             "| level | inputs | shared pass | estimator samples / input (mean) |",
             "| --- | --- | --- | --- |"]
    for level in range(-1, len(dual.sigmas)):
        at = cat["level"] == level
        if at.any():
            name = "abstain" if level < 0 else f"σ = {dual.sigmas[level]:g}"
            lines.append(f"| {name} | {int(at.sum())} | {int((cat['shared'] & at).sum())} | "
                         f"{cat['estimator_samples'][at].double().mean():,.0f} |")
    lines.append(f"| all | {x.shape[0]} | {int(cat['shared'].sum())} | "
                 f"{cat['estimator_samples'].double().mean():,.0f} |")
    lines += ["", "| certified accuracy | " + " | ".join(f"r={r:g}" for r in REPORTED_RADII)
              + " |", "|---" * (len(REPORTED_RADII) + 1) + "|",
              "| Dual RS, this run | " + " | ".join(f"{a:.3f}" for a in accuracy) + " |"]
    if reference:
        lines += ["| Dual RS, results/RESULTS.md | " + " | ".join(f"{a:.3f}" for a in reference)
                  + " |", "| difference | " + " | ".join(
                      f"{a - b:+.3f}" for a, b in zip(accuracy, reference)) + " |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
