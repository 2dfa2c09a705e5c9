"""Fused per-sample-sigma noise on the GPU (Triton): out[r] = x[i] + sigma[i] * noise(seed, id, s, j).

The same specification as ``philox_torch.py`` (the reference) and ``noise_numba.py``:
Philox4x32-10 at counter (e // 2, j, id, stream) keyed by (seed_lo, seed_hi) -- the rounds
of Triton's ``philox_impl``, with our counter layout rather than ``tl.randint4x``'s
(offset_lo, offset_hi, 0, 0), and defined here so they are interpreted or compiled together
with the kernel -- then two 53-bit uniforms, Box-Muller in float64 and x + sigma * z in float64,
rounded once to x's dtype (float64 arithmetic is slow on consumer GPUs; the noise must not be
recognisable, ``kernels/__init__.py``). One program writes ``2 * BLOCK`` elements of one row;
a row of a packed batch may belong to any input, with its own sigma. channels_last batches are
written directly (element (c, hw) of a row lands at hw * C + c).

Importing this module applies ``@triton.jit``; set ``TRITON_INTERPRET=1`` *before* the first
import to run it on the CPU (tests only: the interpreter is ~1000x slower than numba).
"""
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .philox_torch import (PHILOX_ROUNDS, REFINE_COUNTER, REFINE_SCALE, REFINE_SHIFT,
                           REFINE_TOP, check_row_dtypes, split_seed)

BLOCK = 256  # Philox counters per program (512 elements)
# float64 inputs' radius (``philox_torch.fine_radius_terms``), as constants Triton may read
_REFINE_COUNTER = tl.constexpr(REFINE_COUNTER)
_REFINE_SHIFT = tl.constexpr(REFINE_SHIFT)
_REFINE_SCALE = tl.constexpr(REFINE_SCALE)
_REFINE_TOP = tl.constexpr(REFINE_TOP)


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1, N_ROUNDS: tl.constexpr):
    """Philox4x32 (Salmon et al. 2011) on uint32 blocks; the key is bumped after each round."""
    M0: tl.constexpr = 0xD2511F53
    M1: tl.constexpr = 0xCD9E8D57
    W0: tl.constexpr = 0x9E3779B9
    W1: tl.constexpr = 0xBB67AE85
    for _ in tl.static_range(N_ROUNDS):
        a0, a2 = c0, c2
        c0 = tl.umulhi(M1, a2) ^ c1 ^ k0
        c2 = tl.umulhi(M0, a0) ^ c3 ^ k1
        c1 = tl.mul(M1, a2, sanitize_overflow=False)
        c3 = tl.mul(M0, a0, sanitize_overflow=False)
        k0 = tl.add(k0, W0, sanitize_overflow=False)
        k1 = tl.add(k1, W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _store(x_row, out_row, s, z, ek, dim, channels, hw, CHANNELS_LAST: tl.constexpr):
    """out_row[dest(ek)] = x_row[ek] + s * z for the elements ek < dim, in float64 (s and z
    are float64), rounded once to out's dtype."""
    mask = ek < dim
    xv = tl.load(x_row + ek, mask=mask, other=0.0)
    val = xv.to(tl.float64) + s * z
    if CHANNELS_LAST:
        dest = (ek % hw) * channels + ek // hw
    else:
        dest = ek
    tl.store(out_row + dest, val.to(out_row.dtype.element_ty), mask=mask)


@triton.jit
def _log(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _log1p(x, LIBDEVICE: tl.constexpr):
    """log(1 + x); interpreted (no libdevice): log(y) x / (y - 1) with y = fl(1 + x), which
    cancels y's rounding (Goldberg), within a few ulps."""
    if LIBDEVICE:
        return libdevice.log1p(x)
    else:
        y = 1.0 + x
        d = y - 1.0
        return tl.where(d == 0.0, x, tl.log(y) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _sqrt_f64(x, LIBDEVICE: tl.constexpr):
    """IEEE float64 sqrt (tl.sqrt_rn takes float32 only)."""
    if LIBDEVICE:
        return libdevice.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _cos(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.cos(x)
    else:
        return tl.cos(x)


@triton.jit
def _sin(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.sin(x)
    else:
        return tl.sin(x)


@triton.jit
def _row_block(x_ptr, out_ptr, sigma_ptr, ids_ptr, row_input_ptr, row_stream_ptr, row_j_ptr, k0,
               k1, x_row_stride, out_row_stride, BLOCK: tl.constexpr, N_ROUNDS: tl.constexpr,
               FINE: tl.constexpr):
    """The program's row r (axis 0) and Philox blocks b (axis 1): its input and output rows,
    sigma, b, the four Philox words of counter (b, j, id, stream) and, with ``FINE`` (float64
    inputs), the four refinement words of counter (b + 2**31, j, id, stream) (else the first
    four again, unused)."""
    r = tl.program_id(0).to(tl.int64)
    i = tl.load(row_input_ptr + r)
    s = tl.load(sigma_ptr + i)
    c1 = tl.load(row_j_ptr + r).to(tl.uint32)
    c2 = tl.load(ids_ptr + i).to(tl.uint32)
    c3 = tl.load(row_stream_ptr + r).to(tl.uint32)
    b = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c0 = b.to(tl.uint32)
    zero = c0 * 0
    r0, r1, r2, r3 = _philox(c0, zero + c1, zero + c2, zero + c3, k0.to(tl.uint32),
                             k1.to(tl.uint32), N_ROUNDS)
    if FINE:
        # every block's refinement words, used by 1 in 1024: a vector op has no rare branch
        q0, q1, q2, q3 = _philox(c0 | _REFINE_COUNTER, zero + c1, zero + c2, zero + c3,
                                 k0.to(tl.uint32), k1.to(tl.uint32), N_ROUNDS)
    else:
        q0, q1, q2, q3 = r0, r1, r2, r3
    return (x_ptr + i * x_row_stride, out_ptr + r * out_row_stride, s, b,
            (r0, r1, r2, r3, q0, q1, q2, q3))


@triton.jit
def _unit_f64(hi, lo):
    """Two uint32 words -> float64 in (0, 1] from their top 53 bits (the specification's)."""
    k = (hi.to(tl.uint64) << 21) | (lo.to(tl.uint64) >> 11)
    return (k.to(tl.float64) + 0.5) * 1.1102230246251565e-16  # 2**-53


@triton.jit
def _unit64_f64(hi, lo):
    """fl((hi 2**32 + lo + 1/2) 2**-64) (``philox_torch.uint32_pair_to_unit_double64``)."""
    return hi.to(tl.float64) * 2.3283064365386963e-10 + (lo.to(tl.float64) + 0.5) * 5.421010862427522e-20


@triton.jit
def _minus_two_log_fine(r0, r1, q0, q1, q2, q3, LIBDEVICE: tl.constexpr):
    """-2 log(u) of ``philox_torch.fine_radius_terms`` (float64 inputs): u and v = 1 - u from
    64 bits, the small one redrawn from the refinement words q where r0's top 11 bits are
    all 0 or all 1; -2 log1p(-v) in r0's upper half."""
    u = _unit64_f64(r0, r1)
    v = _unit64_f64(~r0, ~r1)
    top = r0 >> _REFINE_SHIFT
    tail = q3.to(tl.float64) + 0.5  # u' = 0.q0 q1 q2 q3 (+ 1/2), Horner in 2**-32
    tail = q2.to(tl.float64) + tail * 2.3283064365386963e-10
    tail = q1.to(tl.float64) + tail * 2.3283064365386963e-10
    w = (q0.to(tl.float64) + tail * 2.3283064365386963e-10) * 2.3283064365386963e-10 * _REFINE_SCALE
    u = tl.where(top == 0, w, tl.where(top == _REFINE_TOP, 1.0 - w, u))
    v = tl.where(top == _REFINE_TOP, w, tl.where(top == 0, 1.0 - w, v))
    return -2.0 * tl.where(r0 >= 0x80000000, _log1p(-v, LIBDEVICE), _log(u, LIBDEVICE))


@triton.jit
def _box_muller(words, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr, FINE: tl.constexpr):
    """The float64 normals (elements 2b, 2b + 1) of the Philox words of blocks b (``words``
    of ``_row_block``); ``FINE``: the radius of float64 inputs."""
    r0, r1, r2, r3, q0, q1, q2, q3 = words
    if FINE:
        rad = _sqrt_f64(_minus_two_log_fine(r0, r1, q0, q1, q2, q3, LIBDEVICE), LIBDEVICE)
    else:
        rad = _sqrt_f64(-2.0 * _log(_unit_f64(r0, r1), LIBDEVICE), LIBDEVICE)
    # float64 2 pi as a float64 tensor: a bare literal could be rounded to float32
    th = tl.full([BLOCK], 6.283185307179586, tl.float64) * _unit_f64(r2, r3)
    return rad * _cos(th, LIBDEVICE), rad * _sin(th, LIBDEVICE)


@triton.jit(do_not_specialize=["k0", "k1"])
def _noisy_rows_kernel(x_ptr, sigma_ptr, ids_ptr, row_input_ptr, row_stream_ptr, row_j_ptr,
                       out_ptr, k0, k1, dim, x_row_stride, out_row_stride, channels, hw,
                       CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
                       N_ROUNDS: tl.constexpr, LIBDEVICE: tl.constexpr, FINE: tl.constexpr):
    """2 float64 normals per Philox block (``philox_torch``); sigma float64, x and out float32
    or float64 (``FINE``)."""
    x_row, out_row, s, b, words = _row_block(
        x_ptr, out_ptr, sigma_ptr, ids_ptr, row_input_ptr, row_stream_ptr, row_j_ptr, k0, k1,
        x_row_stride, out_row_stride, BLOCK, N_ROUNDS, FINE)
    z0, z1 = _box_muller(words, BLOCK, LIBDEVICE, FINE)
    e = 2 * b.to(tl.int64)
    _store(x_row, out_row, s, z0, e, dim, channels, hw, CHANNELS_LAST)
    _store(x_row, out_row, s, z1, e + 1, dim, channels, hw, CHANNELS_LAST)


@triton.jit(do_not_specialize=["k0", "k1"])
def _philox_words_kernel(c_ptr, out_ptr, n, k0, k1, BLOCK: tl.constexpr, N_ROUNDS: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c0 = tl.load(c_ptr + 4 * offs, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(c_ptr + 4 * offs + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(c_ptr + 4 * offs + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(c_ptr + 4 * offs + 3, mask=mask, other=0).to(tl.uint32)
    r0, r1, r2, r3 = _philox(c0, c1, c2, c3, k0.to(tl.uint32), k1.to(tl.uint32), N_ROUNDS)
    tl.store(out_ptr + 4 * offs, r0.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * offs + 1, r1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * offs + 2, r2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * offs + 3, r3.to(tl.int64), mask=mask)


def philox_words(counters: torch.Tensor, k0: int, k1: int) -> torch.Tensor:
    """Philox4x32-10 of int64 counters (n, 4) holding uint32 values -> int64 (n, 4) (tests)."""
    counters = counters.to(torch.int64).contiguous()
    out = torch.empty_like(counters)
    n = counters.shape[0]
    if n:
        _philox_words_kernel[(triton.cdiv(n, 128),)](counters, out, n, k0, k1, BLOCK=128,
                                                     N_ROUNDS=PHILOX_ROUNDS)
    return out


#: True when the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = not isinstance(_noisy_rows_kernel, triton.runtime.jit.JITFunction)


def noisy_rows_into(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                    row_j: torch.Tensor, channels_last_shape=None) -> None:
    """Fill ``out`` (R, D) in place, all tensors on one device (CUDA; CPU under
    TRITON_INTERPRET=1). ``channels_last_shape=(C, H, W)`` writes each row in NHWC order.
    x and out are float32 or float64; the noise is float64 either way."""
    launch = launch_layout(x_flat, (out,), channels_last_shape)
    if launch is None:
        return
    grid, (channels, hw) = launch
    k0, k1 = split_seed(seed)
    _noisy_rows_kernel[grid](x_flat, sigma.to(torch.float64), ids, row_input, row_stream, row_j,
                             out, k0, k1, out.shape[1], x_flat.stride(0), out.stride(0), channels,
                             hw, CHANNELS_LAST=channels_last_shape is not None, BLOCK=BLOCK,
                             N_ROUNDS=PHILOX_ROUNDS, LIBDEVICE=not INTERPRETED,
                             FINE=x_flat.dtype == torch.float64)


def launch_layout(x_flat: torch.Tensor, outs, channels_last_shape):
    """(grid, (channels, hw)) of a noise kernel writing the rows ``outs`` (each (R, D)), or
    None when there is nothing to write; refuses strided rows, a channels_last_shape that
    is not D elements, and dtypes other than x's float32 / float64."""
    rows, dim = outs[0].shape
    if rows == 0 or dim == 0:
        return None
    if x_flat.stride(1) != 1 or any(out.stride(1) != 1 for out in outs):
        raise ValueError("x_flat and out need contiguous rows")
    channels, hw = 1, dim
    if channels_last_shape is not None:
        c, h, w = channels_last_shape
        channels, hw = int(c), int(h) * int(w)
        if channels * hw != dim:
            raise ValueError(f"channels_last_shape {tuple(channels_last_shape)} does not match {dim}")
    check_row_dtypes(x_flat, *outs)
    return (rows, triton.cdiv(triton.cdiv(dim, 2), BLOCK)), (channels, hw)  # 2 normals per block
