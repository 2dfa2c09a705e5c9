"""Fused per-sample-sigma noise on the CPU (numba): out[r] = x[i] + sigma[i] * noise(seed, id, s, j).

Implements exactly the specification of ``philox_torch.py`` (the reference), one Philox
call per 4 noise elements, rows processed in parallel; thread-count invariant because each
element's noise depends only on its counter.
"""
import math

import numba
import numpy as np
import torch

from .philox_torch import (MASK32, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1,
                           split_seed)

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint32(PHILOX_W0)
_W1 = np.uint32(PHILOX_W1)
_MASK = np.uint64(MASK32)
_S32 = np.uint64(32)
_HALF = np.float32(0.5)
_SCALE = np.float32(2.0**-32)
_MINUS2 = np.float32(-2.0)
_TWO_PI = np.float32(2.0 * math.pi)


@numba.njit(inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    for r in range(PHILOX_ROUNDS):
        if r > 0:
            k0 = np.uint32(k0 + _W0)
            k1 = np.uint32(k1 + _W1)
        p0 = _M0 * np.uint64(c0)
        p1 = _M1 * np.uint64(c2)
        c0, c1, c2, c3 = (np.uint32((p1 >> _S32) ^ np.uint64(c1) ^ np.uint64(k0)),
                          np.uint32(p1 & _MASK),
                          np.uint32((p0 >> _S32) ^ np.uint64(c3) ^ np.uint64(k1)),
                          np.uint32(p0 & _MASK))
    return c0, c1, c2, c3


@numba.njit(inline="always")
def _unit(r):
    return (np.float32(r) + _HALF) * _SCALE


@numba.njit(parallel=True, cache=True)
def _noisy_rows_kernel(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, out):
    n_rows = out.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 3) // 4
    for r in numba.prange(n_rows):
        i = row_input[r]
        s = sigma[i]
        c1 = np.uint32(row_j[r])
        c2 = np.uint32(ids[i])
        c3 = np.uint32(row_stream[r])
        for b in range(n_blocks):
            r0, r1, r2, r3 = _philox(np.uint32(b), c1, c2, c3, k0, k1)
            rad = math.sqrt(_MINUS2 * math.log(_unit(r0)))
            th = _TWO_PI * _unit(r1)
            z0 = rad * math.cos(th)
            z1 = rad * math.sin(th)
            rad = math.sqrt(_MINUS2 * math.log(_unit(r2)))
            th = _TWO_PI * _unit(r3)
            z2 = rad * math.cos(th)
            z3 = rad * math.sin(th)
            e = 4 * b
            out[r, dest[e]] = x[i, e] + s * z0
            if e + 1 < dim:
                out[r, dest[e + 1]] = x[i, e + 1] + s * z1
            if e + 2 < dim:
                out[r, dest[e + 2]] = x[i, e + 2] + s * z2
            if e + 3 < dim:
                out[r, dest[e + 3]] = x[i, e + 3] + s * z3


def noisy_rows_into(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                    row_j: torch.Tensor, dest: torch.Tensor) -> None:
    """Fill ``out`` (R, D) in place. ``dest[e]`` is where element e lands in a row, which lets
    the kernel write channels_last batches directly. All tensors on the CPU, contiguous."""
    k0, k1 = split_seed(seed)
    _noisy_rows_kernel(x_flat.numpy(), sigma.numpy(), ids.numpy(), np.uint32(k0), np.uint32(k1),
                       row_input.numpy(), row_stream.numpy(), row_j.numpy(), dest.numpy(),
                       out.numpy())
