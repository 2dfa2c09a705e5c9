#!/usr/bin/env python
"""The committed results table (results/RESULTS.md): certified accuracy of standard RS at each
single sigma and of Dual RS on held-out MNIST-5k test images, same models, same n.

    make results            # = .venv/bin/python -P scripts/results.py  (~10 minutes on 2 cores)
    python scripts/results.py --n-test 20 --out /tmp/r.md   # quick check

Rows: standard RS with the committed classifier at sigma 0.25, 0.5 and 1.0
(models.load_default_classifier), and Dual RS (models.load_default_dual: the committed
estimator choosing among those three classifiers; alpha split equally between estimator and
classifier). Every row certifies the first N_TEST test images (noise keyed by their index,
seed 0) with the same n0, n and alpha; Dual RS spends n0 + n samples on the estimator and
again on the chosen classifier. If DualSmoothing.certify has an adaptive estimator mode
(keyword ``estimator_rounds``), Dual RS gets two rows: plain (estimator_rounds=1) and adaptive
(the default).
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
from dualrs_fast.data import load_default_split
from dualrs_fast.dual import DualSmoothing
from dualrs_fast.models import load_default_classifier, load_default_dual

ROOT = Path(__file__).resolve().parents[1]
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
N_TEST, N0, N, ALPHA, SEED, BATCH, CHUNK = 500, 100, 2000, 0.001, 0, 1000, 50
TIMING_REPEATS = 3


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
    print(f"{label:28s} " + " ".join(f"{a:.3f}" for a in row["acc"])
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


def markdown_table(rows):
    head = ("| method | " + " | ".join(f"r={r:g}" for r in RADII)
            + " | mean | sigma chosen: mean (# 0.25 / 0.5 / 1.0, # abstain) | estimator samples/input "
              "| wall s |")
    lines = [head, "|" + "---|" * (len(RADII) + 5)]
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
            f"{N0 + N}" if "levels" in r else "")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {mean:.3f} | {choice} | "
                     f"{samples} | {r['seconds']:.0f} |")
    lines.append("| *best single sigma* | " + " | ".join(f"{b:.3f}" for b in best)
                 + f" | {sum(best) / len(best):.3f} | | | |")
    return "\n".join(lines)


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
    # warm-up (numba kernels compile once per process) so no row pays for it
    drs.certify(load_default_classifier(0.25), x[:2], 0.25, n0=10, n=10, alpha=0.01)
    load_default_dual().certify(x[:2], n0=10, n=10, alpha=0.01)

    rows = []
    for sigma in (0.25, 0.5, 1.0):
        model = load_default_classifier(sigma)
        rows.append(run_rows(f"standard σ={sigma:g}",
                             lambda xb, ids, m=model, s=sigma: drs.certify(m, xb, s, ids=ids,
                                                                           **common),
                             x, y, CHUNK))
    dual = load_default_dual()
    adaptive = "estimator_rounds" in inspect.signature(DualSmoothing.certify).parameters
    if adaptive:
        rows.append(run_rows("Dual RS (plain estimator)",
                             lambda xb, ids: dual.certify(xb, ids=ids, estimator_rounds=1,
                                                          **common), x, y, CHUNK))
        rows.append(run_rows("Dual RS (adaptive estimator)",
                             lambda xb, ids: dual.certify(xb, ids=ids, **common), x, y, CHUNK))
    else:
        rows.append(run_rows("Dual RS", lambda xb, ids: dual.certify(xb, ids=ids, **common),
                             x, y, CHUNK))
    # Wall-time ratio on one chunk of CHUNK inputs, calls interleaved (the per-row times above
    # ran minutes apart and the machine is shared).
    xc, ids = x[:CHUNK], list(range(min(CHUNK, x.shape[0])))
    model = load_default_classifier(0.25)
    calls = {"standard": lambda: drs.certify(model, xc, 0.25, ids=ids, **common)}
    if adaptive:
        calls["plain"] = lambda: dual.certify(xc, ids=ids, estimator_rounds=1, **common)
        calls["adaptive"] = lambda: dual.certify(xc, ids=ids, **common)
    else:
        calls["plain"] = lambda: dual.certify(xc, ids=ids, **common)
    med = interleaved_timing(calls, TIMING_REPEATS)
    ratio_line = (f"Wall-time ratio Dual RS certify / standard RS certify at sigma 0.25 (same "
                  f"SmallCNN size for estimator and classifier, same n0={args.n0}, n={args.n}; "
                  f"the first {len(ids)} test inputs in one call, the calls interleaved, median "
                  f"of {TIMING_REPEATS}: {med['standard']:.2f} s standard): "
                  f"**{med['plain'] / med['standard']:.2f}**"
                  + (" (plain estimator)" if adaptive else ""))
    if adaptive:
        ratio_line += f", **{med['adaptive'] / med['standard']:.2f}** (adaptive estimator)"
    ratio_line += (f". From the rows' wall times above: "
                   + ", ".join(f"{r['seconds'] / rows[0]['seconds']:.2f}" for r in rows[3:]))
    print(ratio_line.replace("**", ""))

    m = machine()
    est = dual.estimator.meta
    command = "make results  # = .venv/bin/python -P scripts/results.py"
    if argv:
        command = ".venv/bin/python -P scripts/results.py " + " ".join(argv)
    text = f"""# Results: standard RS vs Dual RS on MNIST-5k

Certified accuracy (fraction of inputs classified correctly with certified l2 radius >= r,
pixels in [0, 1]) on the first {args.n_test} held-out test images of the MNIST-5k split,
n0 = {args.n0}, n = {args.n}, alpha = {args.alpha} for every row; noise seed {SEED}, keyed by
dataset index. Standard RS: the committed SmallCNN trained at that sigma. Dual RS: the
committed estimator (SmallCNN, 3 outputs, smoothed at sigma {dual.estimator_sigma:g}, labels
from {est['train_dual']['label_samples']} samples per level, {est['train_dual']['estimator_epochs']}
epochs; `scripts/train_dual_default.py`) choosing among the same three classifiers; alpha split
{dual.estimator_alpha_fraction:g} / {1 - dual.estimator_alpha_fraction:g} between estimator
and classifier; the estimator uses its own n0 + n samples, the chosen classifier n0 + n.
The estimator's settings were chosen on a validation split of the training set (numbers in
`scripts/train_dual_default.py`), never on these test images.
"wall s" is the row's certification time (inputs certified {CHUNK} per call, on a shared
machine: compare the interleaved ratio below). "estimator samples/input": the estimator's
estimation samples per input (of n; the adaptive estimator stops early when its decision is
settled), besides its n0 selection samples.

{markdown_table(rows)}

{ratio_line}.

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
