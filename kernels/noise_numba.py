"""Fused per-sample-sigma noise on the CPU (numba): out[r] = x[i] + sigma[i] * noise(seed, id, s, j).

Implements exactly the specification of ``philox_torch.py`` (the reference): one Philox call
per 2 noise elements, float64 normals, x + sigma * z in float64 rounded once to x's dtype;
thread-count invariant because each element's noise depends only on its counter. Rows are
processed in parallel, in chunks of ``_CHUNK`` rows per task; each row goes in two passes:

1. Philox4x32-10 for all of the row's counters into a scratch buffer. This loop has no
   calls, so LLVM vectorises it (AVX2 ``vpmuludq``).
2. Box-Muller with the C library's ``log`` and ``sin``/``cos`` in float64, then
   ``x + sigma * z`` written to the row, through ``dest`` for channels_last batches.

float64 inputs run ``_noisy_rows_kernel_fine``: the radius of
``philox_torch.fine_radius_terms`` (64-bit uniforms, tails redrawn from a second Philox block).
Pass 2 is bound by the scalar libm calls (``noise_numba_simd`` evaluates them as vectorised
polynomials). Releases the GIL (``nogil``) so it may run beside other Python threads.
"""
import math

import numba
import numpy as np
import torch

from .philox_torch import (MASK32, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1,
                           REFINE_COUNTER, REFINE_SCALE, REFINE_SHIFT, check_row_dtypes,
                           split_seed)

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint32(PHILOX_W0)
_W1 = np.uint32(PHILOX_W1)
_MASK = np.uint64(MASK32)
_S32 = np.uint64(32)
_S21 = np.uint64(21)
_S11 = np.uint64(11)
_HALF_F64 = 0.5
_SCALE_F64 = 2.0**-53
_TWO_PI_F64 = 2.0 * math.pi
_CHUNK = 16  # rows per parallel task: amortises the scratch buffers
_TWO_POW_M32 = 2.0**-32
_TWO_POW_M64 = 2.0**-64
_WORD_MAX_F64 = float(MASK32)  # 2**32 - 1 - w: a word's complement, exact in float64
_REFINE_COUNTER = np.uint32(REFINE_COUNTER)
_REFINE_SHIFT = np.uint32(REFINE_SHIFT)
_REFINE_BUMP = np.uint32(1 << REFINE_SHIFT)  # r0 + 2**21 (mod 2**32) < 2**22: a refined block
_REFINE_TEST_SHIFT = np.uint32(REFINE_SHIFT + 1)
_UPPER_HALF = np.uint32(1 << 31)


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
def _philox_row(bits, n_blocks, c1, c2, c3, k0, k1):
    """bits[k, b] = word k of Philox at counter (b, c1, c2, c3): a call-free, vectorisable loop."""
    for b in range(n_blocks):
        r0, r1, r2, r3 = _philox(np.uint32(b), c1, c2, c3, k0, k1)
        bits[0, b] = r0
        bits[1, b] = r1
        bits[2, b] = r2
        bits[3, b] = r3


@numba.njit(inline="always")
def _unit(hi, lo):
    """Two uint32 words -> float64 in (0, 1] from their top 53 bits (the specification's)."""
    k = (np.uint64(hi) << _S21) | (np.uint64(lo) >> _S11)
    return (np.float64(k) + _HALF_F64) * _SCALE_F64


@numba.njit(inline="always")
def _unit64(hi, lo):
    """fl((hi 2**32 + lo + 1/2) 2**-64) from two words given as float64 (the specification's
    ``uint32_pair_to_unit_double64``: exact products, one rounding in the sum)."""
    return hi * _TWO_POW_M32 + (lo + _HALF_F64) * _TWO_POW_M64


@numba.njit(inline="always")
def _fine_terms(r0, r1):
    """(u, v = 1 - u) of ``philox_torch.fine_radius_terms`` outside its refined tails: the
    64 bits of (r0, r1) and of their complement."""
    hi, lo = np.float64(r0), np.float64(r1)
    return _unit64(hi, lo), _unit64(_WORD_MAX_F64 - hi, _WORD_MAX_F64 - lo)


@numba.njit(inline="always")
def _refines(r0):
    """Is the radius uniform of a block with first word r0 redrawn (top 11 bits all 0 or
    all 1)? One comparison: adding 2**21 wraps exactly those words below 2**22."""
    return np.uint32(r0 + _REFINE_BUMP) >> _REFINE_TEST_SHIFT == 0


@numba.njit(inline="always")
def _refined_terms(r0, b, c1, c2, c3, k0, k1):
    """(u, v) of ``philox_torch.fine_radius_terms`` in a refined block b: the small one is
    2**-11 u', u' the 128-bit uniform of Philox at counter (b + 2**31, c1, c2, c3)."""
    q0, q1, q2, q3 = _philox(np.uint32(b) | _REFINE_COUNTER, c1, c2, c3, k0, k1)
    tail = np.float64(q3) + _HALF_F64
    tail = np.float64(q2) + tail * _TWO_POW_M32
    tail = np.float64(q1) + tail * _TWO_POW_M32
    w = (np.float64(q0) + tail * _TWO_POW_M32) * _TWO_POW_M32 * REFINE_SCALE
    if r0 >> _REFINE_SHIFT == 0:
        return w, 1.0 - w
    return 1.0 - w, w


@numba.njit(inline="always")
def _box_muller_row(bits, n_blocks, z):
    """z[2b + k] = float64 normal k of block b: u0 from words 0-1, u1 from words 2-3."""
    for b in range(n_blocks):
        rad = math.sqrt(-2.0 * math.log(_unit(bits[0, b], bits[1, b])))
        _angle_into(z, b, rad, bits)


@numba.njit(inline="always")
def _angle_into(z, b, rad, bits):
    th = _TWO_PI_F64 * _unit(bits[2, b], bits[3, b])
    z[2 * b] = rad * math.cos(th)
    z[2 * b + 1] = rad * math.sin(th)


@numba.njit(inline="always")
def _box_muller_row_fine(bits, n_blocks, z, c1, c2, c3, k0, k1):
    """``_box_muller_row`` for float64 inputs: the radius of
    ``philox_torch.fine_radius_terms``, refinement words from Philox at counter (b + 2**31,
    c1, c2, c3) under key (k0, k1)."""
    for b in range(n_blocks):
        r0 = bits[0, b]
        if _refines(r0):
            u, v = _refined_terms(r0, b, c1, c2, c3, k0, k1)
        else:
            u, v = _fine_terms(r0, bits[1, b])
        rad = math.sqrt(-2.0 * (math.log1p(-v) if r0 >= _UPPER_HALF else math.log(u)))
        _angle_into(z, b, rad, bits)


@numba.njit(inline="always")
def _add_scaled_row(out, r, x, i, s, z, dim, dest, identity):
    """out[r] = x[i] + s * z, element e written at dest[e] (at e where ``identity``): the
    shared tail of every noise kernel, which fills z its own way. s and z are float64, so
    the sum is float64 and the store rounds it once to out's dtype."""
    if identity:
        for e in range(dim):
            out[r, e] = x[i, e] + s * z[e]
    else:
        for e in range(dim):
            out[r, dest[e]] = x[i, e] + s * z[e]


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_rows_kernel(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, identity, out):
    """2 float64 normals per Philox block; x and out float32 (float64: ``_noisy_rows_kernel_fine``),
    sigma float64."""
    n_rows = out.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 1) // 2
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty(2 * n_blocks, np.float64)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            s = sigma[i]
            _philox_row(bits, n_blocks, np.uint32(row_j[r]), np.uint32(ids[i]),
                        np.uint32(row_stream[r]), k0, k1)
            _box_muller_row(bits, n_blocks, z)
            _add_scaled_row(out, r, x, i, s, z, dim, dest, identity)


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_rows_kernel_fine(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, identity,
                            out):
    """``_noisy_rows_kernel`` for float64 x and out: float64 inputs' radius. A kernel of its
    own (in ``noise_numba_simd`` a float64 branch in the float32 kernel slowed it 1.5x)."""
    n_rows = out.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 1) // 2
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty(2 * n_blocks, np.float64)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            c1, c2, c3 = np.uint32(row_j[r]), np.uint32(ids[i]), np.uint32(row_stream[r])
            _philox_row(bits, n_blocks, c1, c2, c3, k0, k1)
            _box_muller_row_fine(bits, n_blocks, z, c1, c2, c3, k0, k1)
            _add_scaled_row(out, r, x, i, sigma[i], z, dim, dest, identity)


def run_noise_kernel(kernels, out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor,
                     ids: torch.Tensor, seed: int, row_input: torch.Tensor,
                     row_stream: torch.Tensor, row_j: torch.Tensor, dest=None) -> None:
    """Call a numba noise kernel (this module's or ``noise_numba_simd``'s: ``kernels`` =
    (float32 kernel, float64 kernel)) with the arguments of ``noisy_rows_into``; sigma goes in
    as float64, like the noise."""
    check_row_dtypes(x_flat, out)
    k0, k1 = split_seed(seed)
    identity = dest is None
    dest_np = np.zeros(1, np.int64) if identity else dest.numpy()
    kernel = kernels[x_flat.dtype == torch.float64]
    kernel(x_flat.numpy(), sigma.to(torch.float64).numpy(), ids.numpy(), np.uint32(k0),
           np.uint32(k1), row_input.numpy(), row_stream.numpy(), row_j.numpy(), dest_np, identity,
           out.numpy())


def noisy_rows_into(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                    row_j: torch.Tensor, dest=None) -> None:
    """Fill ``out`` (R, D) in place. ``dest[e]`` is where element e lands in a row, which lets
    the kernel write channels_last batches directly (None: identity). All tensors on the CPU,
    contiguous; ``out`` may be a contiguous row range of a larger buffer. x and out are float32
    or float64; the noise is float64 either way (``kernels/__init__.py``)."""
    run_noise_kernel((_noisy_rows_kernel, _noisy_rows_kernel_fine), out, x_flat, sigma, ids, seed,
                     row_input, row_stream, row_j, dest)
