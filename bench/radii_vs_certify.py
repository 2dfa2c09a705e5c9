"""certify_radii (sequential, early stopping) against full CERTIFY at the same n_max and alpha:
samples per input, wall time, and certified accuracy at each grid radius side by side.

    .venv/bin/python -P bench/radii_vs_certify.py --sigma 0.5 --num 50 --n 100000
    .venv/bin/python -P bench/radii_vs_certify.py --dual --num 50 --n 100000

Embedded models (small CNN at --sigma, or the embedded Dual RS), the first --num held-out
MNIST-5k test images (same seed and noise keys, so the sequential run's samples are a
prefix of CERTIFY's): certify_radii on all inputs in one call, then CERTIFY in chunks of
--chunk inputs. Prints a markdown table; --json writes the numbers after each step
(``--table JSON`` prints the table of a run that was cut short).
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
    p.add_argument("--chunk", type=int, default=5, help="CERTIFY's inputs per call")
    p.add_argument("--json", help="write the numbers here (after each step)")
    p.add_argument("--table", metavar="JSON", help="only print the table of this json")
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            out = json.load(f)
        print(table(out, load_dataset("mnist5k").y[:out["num"]]))
        return
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # same for both methods

    data = load_dataset("mnist5k")
    x, y = data.x[:args.num], data.y[:args.num]
    model = load_default_dual() if args.dual else load_default_classifier(args.sigma)
    common = dict(alpha=args.alpha, batch_size=args.batch, seed=0, ids=torch.arange(args.num))
    sigma = {} if args.dual else {"sigma": args.sigma}

    drs.certify(model, x[:2], n0=10, n=100, **sigma, **common_warm(common))  # JIT warm-up
    name = "embedded Dual RS" if args.dual else f"small CNN, sigma {args.sigma:g}"
    out = {"name": name, "num": args.num, "n": args.n, "alpha": args.alpha, "grid": GRID}
    start, cpu = time.perf_counter(), time.process_time()
    seq = drs.certify_radii(model, x, GRID, n_max=args.n, n0=args.n0, **sigma, **common)
    out["certify_radii"] = {"seconds": time.perf_counter() - start,
                            "cpu_seconds": time.process_time() - cpu,
                            "prediction": seq.prediction.tolist(), "radius": seq.radius.tolist(),
                            "samples": seq.samples.tolist()}
    _save(args.json, out)
    print(f"certify_radii: {time.perf_counter() - start:.1f} s, "
          f"{float(seq.samples.double().mean()):,.0f} samples / input", flush=True)

    # Full CERTIFY in chunks (noise is keyed by ids, so chunking changes nothing), saved after
    # each, so that a run cut short still compares the inputs it covered.
    full = {"seconds": 0.0, "cpu_seconds": 0.0, "prediction": [], "radius": [], "samples": []}
    out["certify"] = full
    for lo in range(0, args.num, args.chunk):
        part = slice(lo, min(args.num, lo + args.chunk))
        chunk = dict(common, ids=common["ids"][part])
        start, cpu = time.perf_counter(), time.process_time()
        if args.dual:  # the plain procedure: all n estimator samples (estimator_rounds=1)
            r = model.certify(x[part], n0=args.n0, n=args.n, estimator_rounds=1, **chunk)
            # estimator samples, and the classifier's where it ran
            samples = (args.n0 + args.n) * (1 + (r.level >= 0).long())
        else:
            r = drs.certify(model, x[part], n0=args.n0, n=args.n, **sigma, **chunk)
            samples = torch.full((len(r),), args.n0 + args.n)
        full["seconds"] += time.perf_counter() - start
        full["cpu_seconds"] += time.process_time() - cpu
        full["prediction"] += r.prediction.tolist()
        full["radius"] += r.radius.double().tolist()
        full["samples"] += samples.tolist()
        _save(args.json, out)
        print(f"CERTIFY: {len(full['radius'])} of {args.num} inputs, {full['seconds']:.1f} s",
              flush=True)
    print(table(out, y))


def _save(path, out):
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


def table(out, labels) -> str:
    """Markdown table over the inputs both methods covered (all of them, unless cut short);
    certify_radii's times scaled by the share of its samples those inputs drew. CPU time (the process's, all
    threads) is the steadier number on a shared machine."""
    done = len(out["certify"]["radius"])
    labels = torch.as_tensor(labels)[:done]
    lines = [f"{out['name']}: {done} images, n_max = {out['n']}, alpha = {out['alpha']}",
             "| method | " + " | ".join(f"r={r:g}" for r in GRID)
             + " | samples / input | wall s | CPU s |", "|---" * (len(GRID) + 4) + "|"]
    accuracy, samples, seconds, cpu = {}, {}, {}, {}
    for method in ("certify", "certify_radii"):
        m = out[method]
        accuracy[method] = _accuracy(torch.tensor(m["prediction"][:done]),
                                     torch.tensor(m["radius"][:done]), labels)
        samples[method] = float(np.sum(m["samples"][:done]))
        share = samples[method] / float(np.sum(m["samples"]))  # of its samples, if cut short
        seconds[method] = m["seconds"] * share
        cpu[method] = m["cpu_seconds"] * share
        lines.append(f"| {method} | " + " | ".join(f"{a:.3f}" for a in accuracy[method])
                     + f" | {samples[method] / done:,.0f} | {seconds[method]:.1f} | "
                     f"{cpu[method]:.1f} |")
    diff = np.abs(accuracy["certify"] - accuracy["certify_radii"]).max()
    lines.append(f"samples: {samples['certify'] / samples['certify_radii']:.1f}x fewer; wall "
                 f"time {seconds['certify'] / seconds['certify_radii']:.1f}x less (CPU time "
                 f"{cpu['certify'] / cpu['certify_radii']:.1f}x); largest "
                 f"certified-accuracy difference {diff:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
