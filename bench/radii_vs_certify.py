"""certify_radii (sequential, early stopping) against full CERTIFY at the same n_max and alpha:
samples per input, wall time, and certified accuracy at each grid radius side by side.

    .venv/bin/python -P bench/radii_vs_certify.py --sigma 0.5 --num 50 --n 100000
    .venv/bin/python -P bench/radii_vs_certify.py --dual --num 50 --n 100000

Embedded models (small CNN at --sigma, or the embedded Dual RS), the first --num held-out
MNIST-5k test images, all inputs in one call of each method (same seed and noise keys, so
the sequential run's samples are a prefix of CERTIFY's). Prints a markdown table; --json
writes the numbers.
"""
import argparse
import json
import time

import numpy as np
import torch

import dualrs_fast as drs
from dualrs_fast.loading import load_dataset
from dualrs_fast.logs import certified_accuracy
from dualrs_fast.models import load_default_classifier, load_default_dual
from dualrs_fast.sampling import tune_cpu_allocator

GRID = tuple(0.25 * k for k in range(9))  # 0, 0.25, ..., 2


def _accuracy(prediction, radius, labels):
    table = {"correct": (prediction == labels).numpy(), "radius": radius.double().numpy()}
    return certified_accuracy(table, GRID)


def common_warm(common):
    return {**common, "ids": common["ids"][:2]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--dual", action="store_true", help="the embedded Dual RS instead")
    p.add_argument("--num", type=int, default=50)
    p.add_argument("--n", type=int, default=100_000, help="n of CERTIFY = n_max")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # same for both methods

    data = load_dataset("mnist5k")
    x, y = data.x[:args.num], data.y[:args.num]
    model = load_default_dual() if args.dual else load_default_classifier(args.sigma)
    common = dict(alpha=args.alpha, batch_size=args.batch, seed=0, ids=torch.arange(args.num))
    sigma = {} if args.dual else {"sigma": args.sigma}

    drs.certify(model, x[:2], n0=10, n=100, **sigma, **common_warm(common))  # JIT warm-up
    start = time.perf_counter()
    seq = drs.certify_radii(model, x, GRID, n_max=args.n, n0=args.n0, **sigma, **common)
    seq_s = time.perf_counter() - start
    start = time.perf_counter()
    if args.dual:  # the plain procedure: all n estimator samples (estimator_rounds=1)
        full = model.certify(x, n0=args.n0, n=args.n, estimator_rounds=1, **common)
    else:
        full = drs.certify(model, x, n0=args.n0, n=args.n, **sigma, **common)
    full_s = time.perf_counter() - start

    full_samples = args.num * (args.n0 + args.n)
    if args.dual:  # estimator samples, and the classifier's where it ran
        full_samples += int((args.n0 + args.n) * (full.level >= 0).sum())
    seq_samples = int(seq.samples.sum())
    acc_full = _accuracy(full.prediction, full.radius, y)
    acc_seq = _accuracy(seq.prediction, seq.radius, y)
    name = "embedded Dual RS" if args.dual else f"small CNN, sigma {args.sigma:g}"
    print(f"{name}: {args.num} images, n_max = {args.n}, alpha = {args.alpha}")
    print("| method | " + " | ".join(f"r={r:g}" for r in GRID)
          + " | samples / input | wall s |")
    print("|---" * (len(GRID) + 3) + "|")
    for label, acc, samples, secs in (("CERTIFY", acc_full, full_samples, full_s),
                                      ("certify_radii", acc_seq, seq_samples, seq_s)):
        print(f"| {label} | " + " | ".join(f"{a:.3f}" for a in acc)
              + f" | {samples / args.num:,.0f} | {secs:.1f} |")
    diff = np.abs(acc_full - acc_seq).max()
    print(f"samples: {full_samples / seq_samples:.1f}x fewer; wall time {full_s / seq_s:.1f}x "
          f"less; largest certified-accuracy difference {diff:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"name": name, "num": args.num, "n": args.n, "alpha": args.alpha,
                       "grid": GRID, "certify": {"accuracy": acc_full.tolist(),
                                                 "samples": full_samples, "seconds": full_s},
                       "certify_radii": {"accuracy": acc_seq.tolist(), "samples": seq_samples,
                                         "seconds": seq_s,
                                         "samples_per_input": seq.samples.tolist()}}, f, indent=1)


if __name__ == "__main__":
    main()
