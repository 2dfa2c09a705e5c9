"""Shared timing helpers of the benchmarks."""
import os
import time

import torch

from dualrs_fast.noise import Stream, fill_noisy_rows

SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")


def noisy_batches(x: torch.Tensor, sigma: float, n: int, batch_size: int, seed: int = 0):
    """The exact noisy batches certify() feeds the model for one input (estimation stream)."""
    flat = x.reshape(1, -1).contiguous()
    dim = flat.shape[1]
    batches = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        out = torch.empty(m, dim)
        fill_noisy_rows(out, flat, torch.tensor([sigma]), torch.zeros(1, dtype=torch.int64), seed,
                        torch.zeros(m, dtype=torch.int64),
                        torch.full((m,), int(Stream.ESTIMATE)), torch.arange(start, start + m),
                        torch.arange(dim), "numba")
        batches.append(out.view((m,) + tuple(x.shape)))
    return batches


def forward_only_seconds(model, batches, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of the model's forward on pre-made batches: the limit."""
    best = float("inf")
    with torch.inference_mode():
        model(batches[0])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                model(b)
            best = min(best, time.perf_counter() - start)
    return best
