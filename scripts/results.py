#!/usr/bin/env python
"""The committed results table (results/RESULTS.md) and figure (docs/dual_rs.png): certified
accuracy of standard RS at each single sigma, the multiscale cascade and Dual RS on held-out
MNIST-5k test images, same models, same n0, n and alpha, at two budgets.

    make results            # = .venv/bin/python -P scripts/results.py  (~35 minutes on 2 cores)
    python scripts/results.py --n-test 20 --budgets 500 --out /tmp/r.md --plot /tmp/r.png   # quick check

Rows, for each budget n (N0 = 100 selection samples, alpha = 0.001, seed 0, noise keyed by the
test index): standard RS with the committed classifier at sigma 0.25, 0.5 and 1.0
(models.load_default_classifier); the best single sigma at each radius (a row of maxima, not a
method); CascadeSmoothing over the three classifiers (Jeong & Shin's multiscale smoothing);
Dual RS with the committed estimator (models.load_default_dual, sequential estimator, alpha
split in halves); and the oracle router: per input the level whose classifier certifies the
largest correct radius at the classifier's half of alpha (what Dual RS would get with a perfect
estimator whose R_ve never binds; a ceiling, not a certificate).

Mean radius: the certified radius of correct predictions, 0 otherwise, averaged over inputs.
Wall-time ratio: each method's time over standard RS at sigma 0.5 on the first CHUNK inputs,
calls interleaved TIMING_REPEATS times (the machine may be shared), at the first budget.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import dualrs_fast as drs
from dualrs_fast.cascade import CascadeSmoothing
from dualrs_fast.data import load_default_split
from dualrs_fast.models import load_default_classifier, load_default_dual
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes
from dualrs_fast.smoothing import certify_counts
from dualrs_fast.training import REPORTED_RADII

ROOT = Path(__file__).resolve().parents[1]
RADII = REPORTED_RADII
SIGMAS = (0.25, 0.5, 1.0)
N_TEST, N0, BUDGETS, ALPHA, SEED, BATCH, CHUNK = 500, 100, (2000, 10_000), 0.001, 0, 1000, 50
TIMING_REPEATS = 3


def accuracy(radius, correct):
    return [float(((radius >= r) & correct).double().mean()) for r in RADII]


def row(label, radius, correct, seconds=None, **extra):
    radius = torch.where(correct, radius.double(), 0.0)
    out = {"label": label, "acc": accuracy(radius, correct), "mean": float(radius.mean()),
           "seconds": seconds, **extra}
    print(f"{label:40s} " + " ".join(f"{a:.3f}" for a in out["acc"])
          + f"  mean {out['mean']:.3f}" + (f"  {seconds:.0f} s" if seconds else ""), flush=True)
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load_methods():
    """The committed classifiers, the cascade over them and the embedded Dual RS."""
    experts = {s: load_default_classifier(s) for s in SIGMAS}
    return experts, CascadeSmoothing(experts, sigmas=SIGMAS), load_default_dual()


def budget_rows(x, y, n, ids, methods):
    experts, cascade, dual = methods
    rows, oracle = [], []
    for s, model in experts.items():
        # the two calls drs.certify makes, so the oracle's certificates reuse the same votes
        sigma = torch.full((x.shape[0],), s, dtype=torch.float64)
        counts, sec = timed(lambda: count_votes(
            model, x, sigma, [Draw(Stream.SELECT, N0), Draw(Stream.ESTIMATE, n)], seed=SEED,
            ids=ids, batch_size=BATCH))
        r = certify_counts(counts[0], counts[1], n, ALPHA, sigma)
        rows.append(row(f"standard σ={s:g}", r.radius, r.prediction == y, sec))
        # the oracle's per-level certificates at the classifier's half of alpha
        r = certify_counts(counts[0], counts[1], n, ALPHA / 2, sigma)
        oracle.append(torch.where(r.prediction == y, r.radius.double(), 0.0))
    best = {"label": "*best single σ at each radius*",
            "acc": [max(r["acc"][i] for r in rows) for i in range(len(RADII))],
            "mean": max(r["mean"] for r in rows), "seconds": None}
    r, sec = timed(lambda: cascade.certify(x, n0=N0, n=n, alpha=ALPHA, seed=SEED, ids=ids,
                                           batch_size=BATCH))
    rows.append(row("cascade (multiscale, largest σ first)", r.radius, r.prediction == y, sec,
                    levels=[int((r.level == k).sum()) for k in range(-1, len(SIGMAS))]))
    r, sec = timed(lambda: dual.certify(x, n0=N0, n=n, alpha=ALPHA, seed=SEED, ids=ids,
                                        batch_size=BATCH))
    rows.append(row("Dual RS (committed class_group estimator)", r.radius, r.prediction == y,
                    sec, levels=[int((r.level == k).sum()) for k in range(-1, len(SIGMAS))],
                    estimator_samples=float(r.estimator_samples.double().mean()),
                    r_ve_median=float(r.radius_estimator.median())))
    per_level = torch.stack(oracle)
    best_level = per_level.argmax(0)
    radius = per_level.max(0).values
    rows.append(row("*oracle router (ceiling, not a certificate)*", radius.float(), radius > 0,
                    levels=[0] + [int(((best_level == k) & (radius > 0)).sum())
                                  for k in range(len(SIGMAS))]))
    rows.insert(3, best)
    return rows


def time_ratios(x, ids, n, methods):
    """Each method's wall time over standard RS at sigma 0.5, calls interleaved."""
    experts, cascade, dual = methods
    kw = dict(n0=N0, n=n, alpha=ALPHA, seed=SEED, ids=ids, batch_size=BATCH)
    calls = {f"standard σ={s:g}": (lambda s=s: drs.certify(experts[s], x, sigma=s, **kw))
             for s in SIGMAS}
    calls["cascade (multiscale, largest σ first)"] = lambda: cascade.certify(x, **kw)
    calls["Dual RS (committed class_group estimator)"] = lambda: dual.certify(x, **kw)
    times = {name: [] for name in calls}
    for _ in range(TIMING_REPEATS):
        for name, fn in calls.items():
            times[name].append(timed(fn)[1])
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return {name: t / median["standard σ=0.5"] for name, t in median.items()}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return (f"{cpu}, {nproc} cores, torch {torch.__version__}, Python "
            f"{platform.python_version()}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def markdown(rows, n, ratios):
    head = ("| method | " + " | ".join(f"r={r:g}" for r in RADII) + " | mean radius | "
            "inputs per level: abstain / 0.25 / 0.5 / 1.0 | wall-time ratio to standard σ=0.5 | "
            "wall s |")
    lines = [f"### n = {n:,}", "", head, "|" + "---|" * (len(RADII) + 5)]
    for r in rows:
        levels = " / ".join(str(v) for v in r["levels"]) if "levels" in r else ""
        ratio = f"{ratios[r['label']]:.2f}" if ratios and r["label"] in ratios else ""
        seconds = f"{r['seconds']:.0f}" if r["seconds"] else ""
        lines.append(f"| {r['label']} | " + " | ".join(f"{a:.3f}" for a in r["acc"])
                     + f" | {r['mean']:.3f} | {levels} | {ratio} | {seconds} |")
    return "\n".join(lines)


def plot(all_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_rows), figsize=(6 * len(all_rows), 4.2), squeeze=False)
    for ax, (n, rows) in zip(axes[0], all_rows.items()):
        for r in rows:
            style = "--" if r["label"].startswith("*") else "-"
            ax.plot(RADII, r["acc"], style, marker=".", label=r["label"].strip("*"))
        ax.set_title(f"n = {n:,}, α = {ALPHA}")
        ax.set_xlabel("radius (ℓ2, pixel scale)")
        ax.set_ylabel("certified accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--start", type=int, default=0,
                   help="first test index (e.g. 600 with --n-test 200: the held-out check)")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "RESULTS.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "dual_rs.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, _, x_test, y_test = load_default_split()
    x, y = x_test[args.start:args.start + args.n_test], y_test[args.start:args.start + args.n_test]
    ids = torch.arange(args.start, args.start + x.shape[0])  # noise keyed by the test index
    start = time.perf_counter()
    methods = load_methods()
    ratios = time_ratios(x[:CHUNK], ids[:CHUNK], args.budgets[0], methods)
    print("wall-time ratios", {k: round(v, 2) for k, v in ratios.items()}, flush=True)
    all_rows = {}
    for n in args.budgets:
        all_rows[n] = budget_rows(x, y, n, ids, methods)
    total = time.perf_counter() - start
    command = ("make results" if argv is None and sys.argv[1:] == [] else
               "python scripts/results.py " + " ".join(sys.argv[1:] if argv is None else argv))
    tables = "\n\n".join(markdown(rows, n, ratios if n == args.budgets[0] else None)
                         for n, rows in all_rows.items())
    text = f"""# Certified accuracy: single sigma, cascade, Dual RS

Test images {args.start}..{args.start + x.shape[0] - 1} of the embedded MNIST-5k split, n0 = {N0}, alpha =
{ALPHA}, seed {SEED}; written by `{command}` ({total / 60:.0f} min) on
{machine()}. Radii in pixel-scale l2. The wall-time ratios are medians of {TIMING_REPEATS}
interleaved calls on the first {CHUNK} inputs at n = {args.budgets[0]:,}.

{tables}

![certified accuracy](../docs/{args.plot.name})
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(all_rows, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
