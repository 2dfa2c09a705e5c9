"""Fused per-sample-sigma noise on the CPU, vectorised (numba, backend ``numba-simd``: the CPU
default where the CPU has AVX2 + FMA).

Same specification as ``philox_torch.py`` (the reference) and ``noise_numba.py``: Philox4x32-10
at counter (e // 4, j, id, stream), u = (float32(r) + 0.5) * 2**-32, Box-Muller in float32 with
th = float32(2 pi) * u. The difference is *how* log, sin and cos are evaluated: instead of calls
to the C library (``logf``, ``sincosf``: scalar, ~45 cycles per pair of normals, which bound
``noise_numba``), they are branch-free float32 polynomials (Horner steps as fused multiply-adds,
``llvm.fma.f32``) that LLVM vectorises (AVX2: 8 lanes; AVX-512: 16, see
``_allow_512_bit_vectors``), so the whole row -- Philox, Box-Muller, x + sigma * z -- runs in
SIMD registers: ~2.1G normals/s on 2 AVX-512 cores here (1.5G at 256 bits), ~8x
``noise_numba``. The FMAs made it ~18% faster than separate multiplies and adds.

- log(u): u = 2**e * m with m in [sqrt(1/2), sqrt(2)) (exact bit manipulation), then
  log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its odd Taylor series to s**9
  (truncation < 3e-10 relative), plus e * ln 2 with ln 2 split into an exact high part and a
  low part.
- sin/cos(th), th in (0, 2 pi]: q = nearest multiple of pi/2, w = th - q pi/2 with pi/2 in
  three parts (Cody-Waite; q <= 4 makes the products exact), |w| <= pi/4; Taylor series of
  sin w (to w**11) and cos w (to w**12), truncation < 1e-11; the quadrant picks and negates.

Accuracy: a few float32 ulps from the libm values (tests bound it), i.e. the same noise "up to
float rounding" like every backend -- but not bit-identical to ``noise_numba``'s, so a
certificate computed with one backend can differ from the other's in rare near-tie samples.
Plain IEEE float32 operations and correctly rounded FMAs, without fast-math: results do not
depend on the C library, the vector width, the thread count or whether the CPU has FMA units
(without them ``llvm.fma`` is a slow but exact libm call; ``noise.resolve_backend`` then
picks ``noise_numba``).
"""
import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .noise_numba import _CHUNK, _add_scaled_row, _noisy_rows_kernel_f64, _philox_row
from .philox_torch import split_seed

F = np.float32
_HALF = F(0.5)
_SCALE = F(2.0**-32)
_MINUS2 = F(-2.0)
_TWO_PI = F(2.0 * math.pi)
_ONE = F(1.0)
_TWO = F(2.0)
# ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has 16 significant bits so e * _LN2_HI is exact (|e| <= 34)
_LN2_HI = F(0.693145751953125)
_LN2_LO = F(math.log(2.0) - 0.693145751953125)
# 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9)
_A3, _A5, _A7, _A9 = F(1.0 / 3.0), F(1.0 / 5.0), F(1.0 / 7.0), F(1.0 / 9.0)
_SQRT_HALF_BITS = np.int32(0x3F3504F3)  # float32 sqrt(1/2)
_MANT_SHIFT = np.int32(23)
# pi/2 = _P1 + _P2 + _P3 (Cody-Waite); _P1 and _P2 have few enough bits that q * _P1 and
# q * _P2 are exact for q <= 4
_TWO_OVER_PI = F(2.0 / math.pi)
_P1 = F(1.5703125)
_P2 = F(4.837512969970703125e-04)
_P3 = F(math.pi / 2 - 1.5703125 - 4.837512969970703125e-04)
# Taylor coefficients of sin and cos
_S3, _S5, _S7 = F(-1.0 / 6.0), F(1.0 / 120.0), F(-1.0 / 5040.0)
_S9, _S11 = F(1.0 / 362880.0), F(-1.0 / 39916800.0)
_C2, _C4, _C6 = F(-0.5), F(1.0 / 24.0), F(-1.0 / 720.0)
_C8, _C10, _C12 = F(1.0 / 40320.0), F(-1.0 / 3628800.0), F(1.0 / 479001600.0)


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE bits of a float32 as an int32 (a free bitcast, vectorisable)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _allow_512_bit_vectors(typingctx):
    """Let LLVM vectorise the calling function with 512-bit registers on AVX-512 CPUs.

    LLVM caps auto-vectorisation at 256 bits on Intel AVX-512 CPUs by default (its
    ``prefer-256-bit`` tuning); the function attribute ``"prefer-vector-width"="512"`` (what
    clang's ``-mprefer-vector-width=512`` sets) lifts the cap for this kernel alone, not for
    the rest of the process's numba code: ~1.35x the noise throughput here (bench/RESULTS.md).
    A no-op without AVX-512. The kernel's operations are element-wise IEEE float32 and
    correctly rounded FMAs, so the noise is bit-identical at any vector width (tested).
    torch's MKL / oneDNN kernels already run 512-bit code on such CPUs, so this adds no
    lower-frequency licence. llvmlite only accepts a fixed list of attribute names, so the
    attribute goes into its set directly; should that fail, the kernel stays at 256 bits."""
    def codegen(context, builder, signature, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except Exception:  # a different llvmlite: keep LLVM's default width
            pass
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (``llvm.fma.f32``): one vector instruction on FMA CPUs and
    the same correctly rounded value everywhere (a libm call on CPUs without FMA)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """The float32 with the given IEEE bits."""
    if x != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(inline="always")
def _log(u):
    """log(u) for normal positive float32 u."""
    ix = _f32_bits(u)
    e = np.int32((ix - _SQRT_HALF_BITS) >> _MANT_SHIFT)
    m = _bits_f32(np.int32(ix - (e << _MANT_SHIFT)))  # in [sqrt(1/2), sqrt(2))
    f = m - _ONE  # exact
    s = f / (_TWO + f)
    s2 = s * s
    p = s2 * _fma(s2, _fma(s2, _fma(s2, _A9, _A7), _A5), _A3)
    ef = F(e)
    return _fma(ef, _LN2_HI, (s + s) + _fma(s + s, p, ef * _LN2_LO))


@numba.njit(inline="always")
def _cos_sin(th):
    """(cos th, sin th) for float32 th in [0, 2 pi]."""
    q = np.int32(th * _TWO_OVER_PI + _HALF)  # round to nearest (th >= 0)
    qf = F(q)
    w = _fma(-qf, _P3, _fma(-qf, _P2, _fma(-qf, _P1, th)))
    w2 = w * w
    sin_w = _fma(w * w2, _fma(w2, _fma(w2, _fma(w2, _fma(w2, _S11, _S9), _S7), _S5), _S3), w)
    cos_w = _fma(w2, _fma(w2, _fma(w2, _fma(w2, _fma(w2, _fma(w2, _C12, _C10), _C8), _C6), _C4),
                          _C2), _ONE)
    swap = (q & np.int32(1)) != 0
    c = sin_w if swap else cos_w
    s = cos_w if swap else sin_w
    c = -c if ((q + np.int32(1)) & np.int32(2)) != 0 else c  # quadrants 1, 2
    s = -s if (q & np.int32(2)) != 0 else s  # quadrants 2, 3
    return c, s


@numba.njit(inline="always")
def _unit(r):
    return (F(r) + _HALF) * _SCALE


@numba.njit(inline="always")
def _box_muller_row(bits, n_blocks, z):
    for b in range(n_blocks):
        rad01 = math.sqrt(_MINUS2 * _log(_unit(bits[0, b])))
        c01, s01 = _cos_sin(_TWO_PI * _unit(bits[1, b]))
        rad23 = math.sqrt(_MINUS2 * _log(_unit(bits[2, b])))
        c23, s23 = _cos_sin(_TWO_PI * _unit(bits[3, b]))
        z[4 * b] = rad01 * c01
        z[4 * b + 1] = rad01 * s01
        z[4 * b + 2] = rad23 * c23
        z[4 * b + 3] = rad23 * s23


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_rows_kernel(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, identity, out):
    n_rows = out.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 3) // 4
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        _allow_512_bit_vectors()  # marks the function that holds this loop body
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty(4 * n_blocks, np.float32)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            s = sigma[i]
            _philox_row(bits, n_blocks, np.uint32(row_j[r]), np.uint32(ids[i]),
                        np.uint32(row_stream[r]), k0, k1)
            _box_muller_row(bits, n_blocks, z)
            _add_scaled_row(out, r, x, i, s, z, dim, dest, identity)


@numba.njit(parallel=True, cache=True)
def _log_kernel(u, out):
    for i in numba.prange(u.shape[0]):
        out[i] = _log(u[i])


@numba.njit(parallel=True, cache=True)
def _cos_sin_kernel(th, c, s):
    for i in numba.prange(th.shape[0]):
        c[i], s[i] = _cos_sin(th[i])


def log(u: np.ndarray) -> np.ndarray:
    """The kernel's float32 log (tests)."""
    out = np.empty_like(u, dtype=np.float32)
    _log_kernel(np.ascontiguousarray(u, dtype=np.float32), out)
    return out


def cos_sin(th: np.ndarray):
    """The kernel's float32 (cos, sin) on [0, 2 pi] (tests)."""
    th = np.ascontiguousarray(th, dtype=np.float32)
    c, s = np.empty_like(th), np.empty_like(th)
    _cos_sin_kernel(th, c, s)
    return c, s


def noisy_rows_into(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                    row_j: torch.Tensor, dest=None) -> None:
    """Same contract as ``noise_numba.noisy_rows_into``. float64 x takes ``noise_numba``'s
    float64 kernel (the C library's double log / sin / cos): the float32 polynomials here
    would put float64 inputs' noise on a float32 lattice."""
    k0, k1 = split_seed(seed)
    identity = dest is None
    dest_np = np.zeros(1, np.int64) if identity else dest.numpy()
    kernel = _noisy_rows_kernel_f64 if x_flat.dtype == torch.float64 else _noisy_rows_kernel
    kernel(x_flat.numpy(), sigma.numpy(), ids.numpy(), np.uint32(k0), np.uint32(k1),
                       row_input.numpy(), row_stream.numpy(), row_j.numpy(), dest_np, identity,
                       out.numpy())
