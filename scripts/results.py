#!/usr/bin/env python
"""The committed results table (results/RESULTS.md): certified accuracy of standard RS at each
single sigma and of Dual RS on held-out MNIST-5k test images, same models, same n.

    make results            # = .venv/bin/python -P scripts/results.py  (~9 minutes on 2 cores)
    python scripts/results.py --n-test 20 --out /tmp/r.md   # quick check

Rows: standard RS with the committed classifier at sigma 0.25, 0.5 and 1.0
(models.load_default_classifier), and Dual RS (models.load_default_dual) with each committed
estimator (``estimator="small_cnn"``: the classifiers' architecture; ``"tiny_mlp"``: the
default, ~6x cheaper per sample) choosing among those three classifiers, alpha split equally
between estimator and classifier; each estimator plain (estimator_rounds=1) and sequential
(DualSmoothing.certify's default: the estimator stops sampling once R_ve >= R_cls). Every row
certifies the first N_TEST test images (noise keyed by their index, seed 0) with the same n0,
n and alpha; Dual RS spends n0 + n samples on the estimator (at most, sequential) and again on
the chosen classifier. Each Dual RS row's wall-time ratio to standard RS at sigma 0.25 is
measured on one chunk of CHUNK inputs with all calls interleaved (the machine is shared).
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import dualrs_fast as drs
from dualrs_fast.bounds import certified_radius
from dualrs_fast.data import load_default_split
from dualrs_fast.dual import DualSmoothing, checkpoint_alphas
from dualrs_fast.models import DEFAULT_ESTIMATOR_ARCH, load_default_classifier, load_default_dual
from dualrs_fast.training import REPORTED_RADII

ROOT = Path(__file__).resolve().parents[1]
RADII = REPORTED_RADII
N_TEST, N0, N, ALPHA, SEED, BATCH, CHUNK = 500, 100, 2000, 0.001, 0, 1000, 50
TIMING_REPEATS = 3
ESTIMATORS = (("small_cnn", "SmallCNN"), ("tiny_mlp", "TinyMLP"))  # (arch, name in the table)


def interleaved_timing(calls: dict, repeats: int) -> dict:
    """Median wall time of each call, the calls interleaved round-robin ``repeats`` times, so
    load from other processes on a shared machine hits all of them alike."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def certified_accuracy(radius, correct):
    return [float(((radius >= r) & correct).double().mean()) for r in RADII]


def run_rows(label, fn, x, y, chunk):
    """Certify x in chunks of ``chunk`` inputs (ids = dataset indices) -> row dict."""
    results = []
    start = time.perf_counter()
    for lo in range(0, x.shape[0], chunk):
        ids = list(range(lo, min(lo + chunk, x.shape[0])))
        results.append(fn(x[lo:lo + chunk], ids))
    seconds = time.perf_counter() - start
    cat = lambda name: torch.cat([getattr(r, name) for r in results])  # noqa: E731
    pred, radius = cat("prediction"), cat("radius")
    row = {"label": label, "acc": certified_accuracy(radius, pred == y), "seconds": seconds,
           "abstain": float((pred == drs.ABSTAIN).double().mean())}
    if hasattr(results[0], "radius_estimator"):
        sigma, level = cat("sigma"), cat("level")
        row["mean_sigma"] = float(sigma[~torch.isnan(sigma)].double().mean())
        row["levels"] = [int((level == k).sum()) for k in range(-1, 3)]  # abstain, 3 levels
        row["estimator_abstain"] = int((level == -1).sum())
        if getattr(results[0], "estimator_samples", None) is not None:
            row["estimator_samples"] = float(cat("estimator_samples").double().mean())
    print(f"{label:48s} " + " ".join(f"{a:.3f}" for a in row["acc"])
          + f"  {seconds:.1f} s" + (f"  levels {row['levels']}" if "levels" in row else "")
          + (f"  estimator samples {row['estimator_samples']:.0f}"
             if "estimator_samples" in row else ""), flush=True)
    return row


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"nproc": nproc, "cpu": cpu, "torch": str(torch.__version__),
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def markdown_table(rows, n0, n):
    head = ("| method | " + " | ".join(f"r={r:g}" for r in RADII)
            + " | mean | sigma chosen: mean (# 0.25 / 0.5 / 1.0, # abstain) | estimator samples/input "
              "| wall-time ratio to standard σ=0.25 (interleaved) | wall s |")
    lines = [head, "|" + "---|" * (len(RADII) + 6)]
    best = [max(r["acc"][i] for r in rows if r["label"].startswith("standard"))
            for i in range(len(RADII))]
    for r in rows:
        cells = [f"{a:.3f}" for a in r["acc"]]
        mean = sum(r["acc"]) / len(RADII)
        if "levels" in r:
            lv = r["levels"]
            choice = (f"{r['mean_sigma']:.3f} ({' / '.join(str(v) for v in lv[1:])}, {lv[0]})")
        else:
            choice = ""
        samples = f"{r['estimator_samples']:.0f}" if "estimator_samples" in r else (
            f"{n}" if "levels" in r else "")
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {mean:.3f} | {choice} | "
                     f"{samples} | {ratio} | {r['seconds']:.0f} |")
    lines.append("| *best single sigma* | " + " | ".join(f"{b:.3f}" for b in best)
                 + f" | {sum(best) / len(best):.3f} | | | | |")
    return "\n".join(lines)


def estimator_radius_cap(estimator_sigma, n, alpha_ve, rounds=1):
    """The largest R_ve the estimator can certify: all n estimation samples agreeing, bound at
    the last checkpoint's share of alpha_ve (dual.checkpoint_alphas; all of it when plain)."""
    radius, _ = certified_radius(n, n, checkpoint_alphas(alpha_ve, rounds)[-1], estimator_sigma)
    return float(radius)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--n0", type=int, default=N0)
    p.add_argument("--n", type=int, default=N)
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    _, _, x_test, y_test = load_default_split()
    x, y = x_test[:args.n_test], y_test[:args.n_test]
    common = dict(n0=args.n0, n=args.n, alpha=args.alpha, batch_size=BATCH, seed=SEED)
    print(f"{args.n_test} test inputs, n0={args.n0}, n={args.n}, alpha={args.alpha}; radii "
          f"{RADII}", flush=True)
    duals = {arch: load_default_dual(estimator=arch) for arch, _ in ESTIMATORS}
    seq_rounds = inspect.signature(DualSmoothing.certify).parameters["estimator_rounds"].default
    # warm-up (numba kernels compile once per process) so no row pays for it
    drs.certify(load_default_classifier(0.25), x[:2], 0.25, n0=10, n=10, alpha=0.01)
    for dual in duals.values():
        dual.certify(x[:2], n0=10, n=10, alpha=0.01)

    rows = []
    for sigma in (0.25, 0.5, 1.0):
        model = load_default_classifier(sigma)
        rows.append(run_rows(f"standard σ={sigma:g}",
                             lambda xb, ids, m=model, s=sigma: drs.certify(m, xb, s, ids=ids,
                                                                           **common),
                             x, y, CHUNK))
    variants = {}  # key -> (label, certify(xb, ids))
    for arch, name in ESTIMATORS:
        dual = duals[arch]
        default = " = default" if arch == DEFAULT_ESTIMATOR_ARCH else ""
        variants[f"{arch} plain"] = (
            f"Dual RS, {name} estimator, plain",
            lambda xb, ids, d=dual: d.certify(xb, ids=ids, estimator_rounds=1, **common))
        variants[f"{arch} sequential"] = (
            f"Dual RS, {name} estimator, sequential{default}",
            lambda xb, ids, d=dual: d.certify(xb, ids=ids, **common))
    dual_rows = {key: run_rows(label, fn, x, y, CHUNK) for key, (label, fn) in variants.items()}
    rows.extend(dual_rows.values())
    # Wall-time ratios on one chunk of CHUNK inputs, all calls interleaved (the per-row times
    # above ran minutes apart and the machine is shared).
    xc, ids = x[:CHUNK], list(range(min(CHUNK, x.shape[0])))
    model = load_default_classifier(0.25)
    calls = {"standard": lambda: drs.certify(model, xc, 0.25, ids=ids, **common)}
    calls.update({key: (lambda fn=fn: fn(xc, ids)) for key, (_, fn) in variants.items()})
    med = interleaved_timing(calls, TIMING_REPEATS)
    for key, row in dual_rows.items():
        row["ratio"] = med[key] / med["standard"]
    ratios = "; ".join(
        f"{name} estimator **{med[arch + ' plain'] / med['standard']:.2f}** plain, "
        f"**{med[arch + ' sequential'] / med['standard']:.2f}** sequential"
        for arch, name in ESTIMATORS)
    ratio_line = (f"Wall-time ratio Dual RS certify / standard RS certify at sigma 0.25 (SmallCNN "
                  f"classifiers; same n0={args.n0}, n={args.n}; the first {len(ids)} test inputs "
                  f"in one call, all calls interleaved, median of {TIMING_REPEATS}: "
                  f"{med['standard']:.2f} s standard): {ratios}. From the rows' wall times "
                  f"above: " + ", ".join(f"{r['seconds'] / rows[0]['seconds']:.2f}"
                                         for r in dual_rows.values()))
    print(ratio_line.replace("**", ""))
    dual = duals[DEFAULT_ESTIMATOR_ARCH]
    alpha_ve = dual.alphas(args.alpha)[0]
    cap_plain = estimator_radius_cap(dual.estimator_sigma, args.n, alpha_ve)
    cap_seq = estimator_radius_cap(dual.estimator_sigma, args.n, alpha_ve, seq_rounds)
    cap_line = (f"Why no Dual RS row certifies r = 1.5 or 2: the radius is min(R_ve, R_cls), and "
                f"R_ve <= estimator_sigma * Phi^-1(alpha_ve^(1/n)) = "
                f"{dual.estimator_sigma:g} * Phi^-1({alpha_ve:g}^(1/{args.n})) = "
                f"{cap_plain:.2f} ({cap_seq:.2f} for the sequential estimator, whose last "
                f"of {seq_rounds} checkpoints gets {2 ** (seq_rounds - 1)}/{2 ** seq_rounds - 1} "
                f"of alpha_ve), whatever the estimator "
                f"chooses; radii above that need a larger n (the paper uses n = 100,000) or a "
                f"larger estimator_sigma")
    print(cap_line)

    m = machine()
    est = {arch: duals[arch].estimator.meta for arch, _ in ESTIMATORS}
    td = est[DEFAULT_ESTIMATOR_ARCH]["train_dual"]
    command = "make results  # = .venv/bin/python -P scripts/results.py"
    given = sys.argv[1:] if argv is None else argv
    if given:
        command = ".venv/bin/python -P scripts/results.py " + " ".join(given)
    text = f"""# Results: standard RS vs Dual RS on MNIST-5k

Certified accuracy (fraction of inputs classified correctly with certified l2 radius >= r,
pixels in [0, 1]) on the first {args.n_test} held-out test images of the MNIST-5k split,
n0 = {args.n0}, n = {args.n}, alpha = {args.alpha} for every row; noise seed {SEED}, keyed by
dataset index. Standard RS: the committed SmallCNN trained at that sigma. Dual RS: a committed
estimator (3 outputs, smoothed at sigma {dual.estimator_sigma:g}, labels from
{td['label_samples']} samples per level by the grid rule, {td['estimator_epochs']} epochs;
`scripts/train_dual_default.py --arch ARCH`) choosing among the same three classifiers: the
SmallCNN estimator (the classifiers' architecture, `load_default_dual(estimator="small_cnn")`)
or the TinyMLP estimator (one hidden layer of 256, the default `load_default_dual()`); alpha
split {dual.estimator_alpha_fraction:g} / {1 - dual.estimator_alpha_fraction:g} between
estimator and classifier; the estimator uses its own n0 + n samples (at most: the sequential
estimator, DualSmoothing.certify's default, draws its n in {seq_rounds} nested rounds and stops
once R_ve >= R_cls; plain = `estimator_rounds=1`), the chosen classifier n0 + n.
The estimators' settings were chosen on a validation split of the training set (numbers in
`scripts/train_dual_default.py`), never on these test images.
"wall s" is the row's certification time (inputs certified {CHUNK} per call, on a shared
machine: compare the interleaved ratios). "estimator samples/input": the estimator's
estimation samples per input (of n), besides its n0 selection samples.

{markdown_table(rows, args.n0, args.n)}

{ratio_line}.

{cap_line}.

Command: `{command}`

Machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}, torch {m['torch']} ({m['threads']} threads),
Python {m['python']}; {m['date']}.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
