"""`make demo`: certify a handful of held-out MNIST images with the embedded small CNN."""
import time

import torch

from . import smoothing
from .data import load_default_split
from .logs import certified_accuracy, format_row, header
from .models import load_default_classifier


def run_demo(num_inputs: int = 10, sigma: float = 0.25, n0: int = 100, n: int = 10_000,
             alpha: float = 0.001, batch_size: int = 1000, seed: int = 0) -> dict:
    """Certifies the first ``num_inputs`` test images one after another (like Cohen's
    certify.py), printing a row per input, then the certified accuracy."""
    _, _, x_test, y_test = load_default_split()
    model = load_default_classifier(sigma)
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
    table = {k: torch.tensor(v).numpy() for k, v in rows.items()}
    radii = (0.0, 0.25, 0.5, 0.75)
    acc = certified_accuracy(table, radii)
    print("certified accuracy: " + ", ".join(f"r={r}: {a:.2f}" for r, a in zip(radii, acc)))
    print(f"total {sum(rows['time']):.2f} s for {num_inputs * (n0 + n):,} noisy samples")
    return table
