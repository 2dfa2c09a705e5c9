"""`make demo`: certify a handful of held-out MNIST images with the embedded small CNN, then
the same images with the embedded Dual RS (estimator-chosen sigma per input)."""
import math
import time

import torch

from . import smoothing
from .data import load_default_split
from .logs import format_row, header, summary_line
from .models import load_default_classifier, load_default_dual
from .training import estimator_arch



def _summary(rows: dict, samples: int) -> dict:
    table = {k: torch.tensor(v).numpy() for k, v in rows.items()}
    print(summary_line(table))  # as `dualrs certify` prints it
    print(f"total {sum(rows['time']):.2f} s for {samples:,} noisy samples")
    return table


def run_demo(num_inputs: int = 10, sigma: float = 0.25, n0: int = 100, n: int = 10_000,
             alpha: float = 0.001, batch_size: int = 1000, seed: int = 0,
             dual: bool = True) -> dict:
    """Certifies the first ``num_inputs`` test images one after another (like Cohen's
    certify.py), printing a row per input, then the certified accuracy; with ``dual``, again
    with the embedded Dual RS (columns sigma, radius_estimator, radius_classifier).
    Returns {"standard": table, "dual": table} (columns as lists/arrays)."""
    _, _, x_test, y_test = load_default_split()
    model = load_default_classifier(sigma)
    # compile the kernels before the first timed row (numba JIT: seconds, once per process)
    smoothing.certify(model, x_test[:1], sigma, n0=2, n=2, alpha=alpha, seed=seed)
    print(f"small CNN smoothed at sigma={sigma} (pixels in [0,1]); n0={n0}, n={n}, alpha={alpha}")
    print(header())
    rows = {name: [] for name in ("idx", "label", "predict", "radius", "correct", "time")}
    for i in range(num_inputs):
        start = time.perf_counter()
        r = smoothing.certify(model, x_test[i], sigma, n0=n0, n=n, alpha=alpha,
                              batch_size=batch_size, seed=seed, ids=[i])
        elapsed = time.perf_counter() - start
        label, pred, radius = int(y_test[i]), int(r.prediction[0]), float(r.radius[0])
        print(format_row(i, label, pred, radius, elapsed), flush=True)
        for name, v in zip(rows, (i, label, pred, radius, int(pred == label), elapsed)):
            rows[name].append(v)
    out = {"standard": _summary(rows, num_inputs * (n0 + n))}
    if not dual:
        return out

    smoother = load_default_dual()
    print()
    print(f"Dual RS: a {estimator_arch(smoother.estimator)} estimator smoothed at "
          f"sigma={smoother.estimator_sigma:g} picks sigma in "
          f"{{{', '.join(f'{s:g}' for s in smoother.sigmas)}}} per input, the classifier trained "
          "at that sigma certifies;")
    print(f"radius = min(radius_estimator, radius_classifier), alpha={alpha} split between "
          f"them; n0={n0}, n={n} for each of the two")
    extra = ("sigma", "radius_estimator", "radius_classifier")
    print(header(extra))
    rows = {name: [] for name in ("idx", "label", "predict", "radius", "correct", "time") + extra}
    samples = 0
    for i in range(num_inputs):
        start = time.perf_counter()
        r = smoother.certify(x_test[i], n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                             seed=seed, ids=[i])
        elapsed = time.perf_counter() - start
        samples += int(r.samples.sum())  # estimator and classifier (one pass where shared)
        label, pred, radius = int(y_test[i]), int(r.prediction[0]), float(r.radius[0])
        s, r_ve, r_cls = float(r.sigma[0]), float(r.radius_estimator[0]), float(r.radius_classifier[0])
        print(format_row(i, label, pred, radius, elapsed, sigma=s, radius_estimator=r_ve,
                         radius_classifier=r_cls), flush=True)
        for name, v in zip(rows, (i, label, pred, radius, int(pred == label), elapsed, s, r_ve,
                                  r_cls)):
            rows[name].append(v)
    out["dual"] = _summary(rows, samples)
    chosen = [s for s in rows["sigma"] if not math.isnan(s)]
    if chosen:
        print("sigma chosen: " + ", ".join(f"{s:g} x{chosen.count(s)}"
                                             for s in sorted(set(chosen))))
    return out
