"""Fused per-sample-sigma noise on the CPU, vectorised (numba, backend ``numba-simd``: the CPU
default where the CPU has AVX2 + FMA).

Same specification as ``philox_torch.py`` (the reference) and ``noise_numba.py``: Philox4x32-10
at counter (e // 2, j, id, stream), two 53-bit uniforms per block, Box-Muller in float64,
x + sigma * z in float64 rounded once to x's dtype. The difference is *how* log, sin and cos are
evaluated: instead of calls to the C library (scalar, which bound ``noise_numba``), they are
branch-free float64 polynomials (Horner steps as fused multiply-adds, ``llvm.fma.f64``) that
LLVM vectorises (AVX2: 4 lanes; AVX-512: 8, see ``_allow_512_bit_vectors``), so the whole row
-- Philox, Box-Muller, x + sigma * z -- runs in SIMD registers.

- uniforms: k = hi 2**21 + lo // 2**11 and (k + 1/2) 2**-53 as two exact FMAs; float64
  inputs' radius (``philox_torch.fine_radius_terms``) from 64 bits and their complement,
  log1p(-v) through the same series, in a kernel of their own (``_noisy_rows_kernel_fine``).
- log(u), u in (0, 1]: u = 2**k * (1 + f) with 1 + f in about [sqrt(1/2), sqrt(2)) (exact
  bit manipulation on the high word), then log(1 + f) = f - (f**2/2 - s (f**2/2 + R)) with
  s = f / (2 + f), |s| <= 0.172 and R = 2 s**2/3 + 2 s**4/5 + ... (the series of
  2 atanh(s) - 2 s, to s**20: truncation < 1e-18 relative, evaluated by Estrin's scheme),
  plus k ln 2 with ln 2 split into a high part (42 bits, so k * high is exact) and a low
  part. Box-Muller takes ``_minus_two_log``: the same values times -2, exactly, with the -2
  folded into the inputs.
- sin/cos(th), th in (0, 2 pi]: q = nearest multiple of pi/2, w = th - q pi/2 with pi/2 in
  three parts (Cody-Waite; q <= 4 makes q times the first two exact), |w| <= pi/4; Taylor series
  of sin w (to w**17) and cos w (to w**16), truncation < 1e-17, each as a Horner low half plus
  w**8 times a high half; the quadrant picks and negates.

Speed: the loop is bound by the float64 arithmetic as a whole, not by one step. In an
ablation of the loop body (AMD EPYC, Zen 5 with AVX-512, one thread) dropping log or sin/cos
each saved about a quarter of the time, the division 5%, the square root 4%. The exact FMAs
for the uniforms, Estrin's scheme, the folded -2 and unsigned conversions made the kernel
1.06x faster there (645M normals/s per core) and 1.17x with AVX2 only (312M), in CPU time
per 1000 x 784 float32 call, interleaved with the previous kernel in one process at load
~10. AVX2 only means NUMBA_CPU_NAME=haswell *and* NUMBA_CPU_FEATURES set to the host's
features less avx512*: NUMBA_CPU_NAME alone keeps the host's AVX-512. The loop vectorises at
256 bits there (4 lanes; the assembly has ymm vdivpd / vsqrtpd / vfmadd).

Accuracy: within a few float64 ulps of the libm values (tests bound it). Rounded once to
float32, x + sigma * z then equals the reference's bit for bit except where the float64 value
lies within those few ulps of a float32 rounding boundary (about one element in 10**8);
float64 inputs' noisy values differ from ``noise_numba``'s in the last bits. Plain IEEE
float64 operations and correctly rounded FMAs, without fast-math: results do not depend on
the C library, the vector width, the thread count or whether the CPU has FMA units (without
them ``llvm.fma`` is a slow but exact libm call; ``noise.resolve_backend`` then picks
``noise_numba``).
"""
import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .noise_numba import (_CHUNK, _fine_terms, _philox_row, _refined_terms, _refines,
                          run_noise_kernel)

_ONE, _TWO, _HALF = 1.0, 2.0, 0.5
_TWO_POW_21 = 2.0**21
_TWO_POW_M53 = 2.0**-53
_TWO_POW_M54 = 2.0**-54
_TWO_PI = 2.0 * math.pi
_LO_SHIFT = np.uint32(11)
# ln 2 = _LN2_HI + _LN2_LO: _LN2_HI has 42 significant bits so k * _LN2_HI is exact (|k| <= 55)
_LN2_HI = float.fromhex("0x1.62e42fefa3800p-1")
_LN2_LO = 5.497923018708371e-14
# log(1 + f): R = s^2 (2/3 + s^2 (2/5 + ... + s^2 2/21))
_LOG_COEFFS = tuple(2.0 / (2 * k + 1) for k in range(1, 11))
_SQRT_HALF_HI = 0x3FE6A09E  # high word of float64 sqrt(1/2)
_EXP_BIAS = np.int32(1 << 10)  # hx + _EXP_OFFSET >= 0 for every u >= 2**-54
_EXP_OFFSET = np.uint32((1 << 30) - _SQRT_HALF_HI)
_SHIFT_HI = np.uint64(32)
_SHIFT_EXP = np.uint32(20)  # exponent position in the high word
_SHIFT_EXP64 = np.int64(52)
# pi/2 = _P1 + _P2 + _P3 (Cody-Waite); _P1 and _P2 have 33 significant bits, so q * _P1 and
# q * _P2 are exact for q <= 4 (values checked in tests against 60-digit pi)
_TWO_OVER_PI = 2.0 / math.pi
_P1 = float.fromhex("0x1.921fb54400000p+0")
_P2 = float.fromhex("0x1.0b4611a600000p-34")
_P3 = float.fromhex("0x1.3198a2e037073p-69")
# Taylor coefficients: sin w = w + w^3 (S3 + w^2 (S5 + ...)), cos w = 1 + w^2 (C2 + ...)
_S3, _S5, _S7, _S9, _S11, _S13, _S15, _S17 = (
    (-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 9))
_C2, _C4, _C6, _C8, _C10, _C12, _C14, _C16 = (
    (-1.0) ** k / math.factorial(2 * k) for k in range(1, 9))
_L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9, _L10 = _LOG_COEFFS
# the same series in z = (2 s)**2 = 4 s**2, and ln 2's parts times 2 and -2 (_minus_two_log)
_Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9, _Q10 = (
    c / 4.0**k for k, c in enumerate(_LOG_COEFFS, 1))
_TWO_LN2_LO = 2.0 * _LN2_LO
_MINUS_TWO_LN2_HI = -2.0 * _LN2_HI


@intrinsic
def _f64_bits(typingctx, x):
    """The IEEE bits of a float64 as an int64 (a free bitcast, vectorisable)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, x):
    """The float64 with the given IEEE bits."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _allow_512_bit_vectors(typingctx):
    """Let LLVM vectorise the calling function with 512-bit registers on AVX-512 CPUs.

    LLVM caps auto-vectorisation at 256 bits on Intel AVX-512 CPUs by default (its
    ``prefer-256-bit`` tuning); the function attribute ``"prefer-vector-width"="512"`` (what
    clang's ``-mprefer-vector-width=512`` sets) lifts the cap for this kernel alone, not for
    the rest of the process's numba code: 1.35x this kernel's throughput on the AMD EPYC
    with NUMBA_CPU_NAME=skylake-avx512 (LLVM's Intel tuning), one thread.
    A no-op without AVX-512. The kernel's operations are element-wise IEEE float64 and
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
    """a * b + c with one rounding (``llvm.fma.f64``): one vector instruction on FMA CPUs and
    the same correctly rounded value everywhere (a libm call on CPUs without FMA)."""
    if not (a == b == c == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float64(types.float64, types.float64, types.float64), codegen


@numba.njit(inline="always")
def _unit(hi, lo):
    """The specification's 53-bit uniform in (0, 1] from two uint32 words, in two exact
    FMAs: k = hi 2**21 + lo // 2**11 < 2**53, then fma(k, 2**-53, 2**-54) = fl(k + 0.5)
    2**-53 as the reference rounds it (a power-of-2 scale commutes with rounding). uint32 ->
    float64 is one instruction with AVX-512 (vcvtudq2pd) and a short sequence with AVX2,
    where it measured as fast as signed conversions plus an offset."""
    return _fma(_fma(np.float64(hi), _TWO_POW_21, np.float64(lo >> _LO_SHIFT)), _TWO_POW_M53,
                _TWO_POW_M54)


@numba.njit(inline="always")
def _log_reduce(u):
    """(k, f) with u = 2**k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)): exact."""
    ix = _f64_bits(u)
    hx = np.uint32(np.uint64(ix) >> _SHIFT_HI)
    # k = floor((hx - _SQRT_HALF_HI) / 2**20) with unsigned (logical) shifts only: AVX2 has
    # no 64-bit arithmetic shift
    k = np.int32(np.uint32(hx + _EXP_OFFSET) >> _SHIFT_EXP) - _EXP_BIAS
    return k, _bits_f64(ix - (np.int64(k) << _SHIFT_EXP64)) - _ONE


@numba.njit(inline="always")
def _log_series(z, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    """c1 + c2 z + ... + c10 z**9 by Estrin's scheme: 4 dependent FMAs where Horner's has 9,
    on the longest chain of the kernel (log -> sqrt), which bounds its speed. Its rounding
    moves log by < 0.01 ulp (the series enters as s * s**2 * (...), |s| <= 0.172)."""
    z2 = z * z
    z4 = z2 * z2
    low = _fma(z2, _fma(z, c4, c3), _fma(z, c2, c1))
    mid = _fma(z2, _fma(z, c8, c7), _fma(z, c6, c5))
    return _fma(z4, _fma(z4, _fma(z, c10, c9), mid), low)


@numba.njit(inline="always")
def _log(u):
    """log(u) for normal positive float64 u."""
    k, f = _log_reduce(u)
    hfsq = _HALF * f * f
    s = f / (_TWO + f)
    z = s * s
    hfsq_r = _fma(z, _log_series(z, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9, _L10), hfsq)
    kf = np.float64(k)
    return _fma(kf, _LN2_HI, f - (hfsq - _fma(s, hfsq_r, kf * _LN2_LO)))


@numba.njit(inline="always")
def _minus_two_log(u):
    """-2 log(u), bit for bit -2 * _log(u), one dependent step shorter: every value of
    ``_log`` scaled by a power of 2 (exact), with the -2 folded into its inputs (2f, 2s,
    4s**2, coefficients / 4**k) instead of a last multiplication."""
    k, f = _log_reduce(u)
    return _minus_two_log_kf(k, f)


@numba.njit(inline="always")
def _minus_two_log_fine(u, v):
    """-2 log(u) given v = 1 - u to full precision too (float64 inputs' radius): where the
    reduction keeps k = 0 (u in [sqrt(1/2), 1]), f = u - 1 is taken as -v, the series then
    being log1p(-v) (no rounding of 1 + f to correct: f is given)."""
    k, f = _log_reduce(u)
    return _minus_two_log_kf(k, -v if k == 0 else f)


@numba.njit(inline="always")
def _minus_two_log_kf(k, f):
    """-2 (k ln 2 + log1p(f)), |f| <= 0.42: ``_minus_two_log`` after the reduction."""
    hfsq = _HALF * f * f
    two_f = f + f
    two_s = two_f / (_TWO + f)
    z4 = two_s * two_s
    hfsq_r = _fma(z4, _log_series(z4, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9, _Q10), hfsq)
    kf = np.float64(k)
    # f * f = 2 hfsq exactly; -2 (f - (hfsq - x)) = (2 hfsq - 2 x) - 2 f
    e = (f * f - _fma(two_s, hfsq_r, kf * _TWO_LN2_LO)) - two_f
    return _fma(kf, _MINUS_TWO_LN2_HI, e)


@numba.njit(inline="always")
def _cos_sin(th):
    """(cos th, sin th) for float64 th in [0, 2 pi]."""
    # q by rounding in float64 (one instruction, off the int32 round trip); the int32 copy
    # only picks the quadrant at the end
    qf = np.floor(_fma(th, _TWO_OVER_PI, _HALF))
    q = np.int32(qf)
    w = _fma(-qf, _P3, _fma(-qf, _P2, _fma(-qf, _P1, th)))
    w2 = w * w
    w4 = w2 * w2
    w8 = w4 * w4
    # each series as its low half (Horner: these terms set the rounding) plus w**8 times its
    # high half, computed side by side: 4 dependent steps fewer than one Horner chain
    sin_p = _fma(w8, _fma(w2, _fma(w2, _fma(w2, _S17, _S15), _S13), _S11),
                 _fma(w2, _fma(w2, _fma(w2, _S9, _S7), _S5), _S3))
    cos_p = _fma(w8, _fma(w2, _fma(w2, _fma(w2, _C16, _C14), _C12), _C10),
                 _fma(w2, _fma(w2, _fma(w2, _C8, _C6), _C4), _C2))
    sin_w = _fma(w * w2, sin_p, w)
    cos_w = _fma(w2, cos_p, _ONE)
    swap = (q & np.int32(1)) != 0
    c = sin_w if swap else cos_w
    s = cos_w if swap else sin_w
    c = -c if ((q + np.int32(1)) & np.int32(2)) != 0 else c  # quadrants 1, 2
    s = -s if (q & np.int32(2)) != 0 else s  # quadrants 2, 3
    return c, s


@numba.njit(inline="always")
def _box_muller_row(bits, n_blocks, z):
    """z[0, b], z[1, b] = the two normals of block b (elements 2b and 2b + 1): two
    contiguous rows, which LLVM vectorises (interleaved stores into one row it would not)."""
    for b in range(n_blocks):
        rad = math.sqrt(_minus_two_log(_unit(bits[0, b], bits[1, b])))
        c, s = _cos_sin(_TWO_PI * _unit(bits[2, b], bits[3, b]))
        z[0, b] = rad * c
        z[1, b] = rad * s


@numba.njit(inline="always")
def _fine_pair(u, v, th_hi, th_lo):
    """The two normals of float64 inputs' radius uniform (u, v = 1 - u) and angle words."""
    rad = math.sqrt(_minus_two_log_fine(u, v))
    c, s = _cos_sin(_TWO_PI * _unit(th_hi, th_lo))
    return rad * c, rad * s


@numba.njit(nogil=True, cache=True)
def _refined_pair(r0, th_hi, th_lo, b, c1, c2, c3, k0, k1):
    """The normals of refined block b (``_refined_terms``): scalar, rare, not inlined."""
    u, v = _refined_terms(r0, b, c1, c2, c3, k0, k1)
    return _fine_pair(u, v, th_hi, th_lo)


@numba.njit(inline="always")
def _box_muller_row_fine(bits, n_blocks, z, c1, c2, c3, k0, k1):
    """``_box_muller_row`` for float64 inputs: the radius of
    ``philox_torch.fine_radius_terms``, vectorised outside its refined tails, then the blocks
    it redraws (1 in 1024) one by one through ``_refined_pair`` (not inlined: inlined, its
    scalar Philox cost the vectorised loop far more than it computes); (c1, c2, c3, k0, k1):
    the row's counter words and key, for the refinement words."""
    for b in range(n_blocks):
        u, v = _fine_terms(bits[0, b], bits[1, b])
        z[0, b], z[1, b] = _fine_pair(u, v, bits[2, b], bits[3, b])
    for b in range(n_blocks):
        if _refines(bits[0, b]):
            z[0, b], z[1, b] = _refined_pair(bits[0, b], bits[2, b], bits[3, b], b, c1, c2, c3,
                                             k0, k1)


@numba.njit(inline="always")
def _add_scaled_pairs(out, r, x, i, s, z, dim, dest, identity):
    """``noise_numba._add_scaled_row`` for z in two rows: element e takes z[e % 2, e // 2]."""
    half = dim // 2
    if identity:
        for b in range(half):
            out[r, 2 * b] = x[i, 2 * b] + s * z[0, b]
            out[r, 2 * b + 1] = x[i, 2 * b + 1] + s * z[1, b]
    else:
        for b in range(half):
            out[r, dest[2 * b]] = x[i, 2 * b] + s * z[0, b]
            out[r, dest[2 * b + 1]] = x[i, 2 * b + 1] + s * z[1, b]
    if dim % 2:
        out[r, dest[dim - 1] if not identity else dim - 1] = x[i, dim - 1] + s * z[0, half]


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_rows_kernel(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, identity, out):
    n_rows = out.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 1) // 2
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        _allow_512_bit_vectors()  # marks the function that holds this loop body
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty((2, n_blocks), np.float64)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            s = sigma[i]
            _philox_row(bits, n_blocks, np.uint32(row_j[r]), np.uint32(ids[i]),
                        np.uint32(row_stream[r]), k0, k1)
            _box_muller_row(bits, n_blocks, z)
            _add_scaled_pairs(out, r, x, i, s, z, dim, dest, identity)


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_rows_kernel_fine(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, identity,
                            out):
    """``_noisy_rows_kernel`` for float64 inputs (their radius, ``_box_muller_row_fine``): a
    kernel of its own, as a float64 branch in the float32 kernel made LLVM's code for the
    float32 rows 1.5x slower."""
    n_rows = out.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 1) // 2
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        _allow_512_bit_vectors()  # marks the function that holds this loop body
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty((2, n_blocks), np.float64)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            c1, c2, c3 = np.uint32(row_j[r]), np.uint32(ids[i]), np.uint32(row_stream[r])
            _philox_row(bits, n_blocks, c1, c2, c3, k0, k1)
            _box_muller_row_fine(bits, n_blocks, z, c1, c2, c3, k0, k1)
            _add_scaled_pairs(out, r, x, i, sigma[i], z, dim, dest, identity)


@numba.njit(parallel=True, cache=True)
def _log_kernel(u, out):
    for i in numba.prange(u.shape[0]):
        out[i] = _log(u[i])


@numba.njit(parallel=True, cache=True)
def _minus_two_log_kernel(u, out):
    for i in numba.prange(u.shape[0]):
        out[i] = _minus_two_log(u[i])


@numba.njit(parallel=True, cache=True)
def _cos_sin_kernel(th, c, s):
    for i in numba.prange(th.shape[0]):
        c[i], s[i] = _cos_sin(th[i])


@numba.njit(parallel=True, cache=True)
def _unit_kernel(hi, lo, out):
    for i in numba.prange(hi.shape[0]):
        out[i] = _unit(hi[i], lo[i])


def log(u: np.ndarray) -> np.ndarray:
    """The kernel's float64 log (tests)."""
    u = np.ascontiguousarray(u, dtype=np.float64)
    out = np.empty_like(u)
    _log_kernel(u, out)
    return out


def minus_two_log(u: np.ndarray) -> np.ndarray:
    """The kernel's -2 log (tests)."""
    u = np.ascontiguousarray(u, dtype=np.float64)
    out = np.empty_like(u)
    _minus_two_log_kernel(u, out)
    return out


def cos_sin(th: np.ndarray):
    """The kernel's float64 (cos, sin) on [0, 2 pi] (tests)."""
    th = np.ascontiguousarray(th, dtype=np.float64)
    c, s = np.empty_like(th), np.empty_like(th)
    _cos_sin_kernel(th, c, s)
    return c, s


def unit(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The kernel's 53-bit uniforms from uint32 word pairs (tests)."""
    hi = np.ascontiguousarray(hi, dtype=np.uint32)
    out = np.empty(hi.shape, np.float64)
    _unit_kernel(hi, np.ascontiguousarray(lo, dtype=np.uint32), out)
    return out


def noisy_rows_into(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                    row_j: torch.Tensor, dest=None) -> None:
    """Same contract as ``noise_numba.noisy_rows_into``."""
    run_noise_kernel((_noisy_rows_kernel, _noisy_rows_kernel_fine), out, x_flat, sigma, ids, seed,
                     row_input, row_stream, row_j, dest)
