"""Noisy batches: x + sigma * noise(seed, id, stream, j), dispatched to the fastest backend.

The noise is specified in ``dualrs_fast.kernels`` (counter-based Philox4x32-10 + Box-Muller),
so every backend draws the same noise for the same (seed, input id, stream, sample index).
"""
from enum import IntEnum

import torch

from .kernels import philox_torch

BACKENDS = ("auto", "numba", "torch")


class Stream(IntEnum):
    """Independent noise streams: selection and estimation samples never share noise."""
    SELECT = 0
    ESTIMATE = 1
    PREDICT = 2
    ESTIMATOR_SELECT = 3
    ESTIMATOR_ESTIMATE = 4
    ESTIMATOR_PREDICT = 5


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"noise backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError("the numba noise backend runs on the CPU only")
    return backend


def fill_noisy_rows(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor, row_j: torch.Tensor,
                    dest: torch.Tensor, backend: str) -> None:
    """out[r, dest[e]] = x_flat[row_input[r], e] + sigma[row_input[r]] * noise_e(row)."""
    if backend == "numba":
        from .kernels.noise_numba import noisy_rows_into
        noisy_rows_into(out, x_flat, sigma, ids, seed, row_input, row_stream, row_j, dest)
        return
    rows = philox_torch.noisy_rows(x_flat, sigma, ids, seed, row_input, row_stream, row_j)
    out[:, dest] = rows.to(out.dtype)
