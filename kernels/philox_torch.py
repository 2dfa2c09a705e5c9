"""Plain-PyTorch reference of the counter-based Gaussian noise (the specification).

Slow (int64 arithmetic emulating uint32), used by tests and as the fallback on devices
without a fused kernel. float64 inputs' radius: ``fine_radius_terms`` (``gaussian_noise``'s
``fine``). Every other backend must reproduce it up to float64 rounding in
log / sin / cos (for float32 inputs: bit for bit, but for the rare x + sigma * z within a few
float64 ulps of a float32 rounding boundary).
"""
import math

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
TWO_POW_M53 = 2.0**-53
TWO_PI = 2.0 * math.pi
# float64 inputs' radius uniform (``fine_radius_terms``): 64 bits, refined in its tails
TWO_POW_M32 = 2.0**-32
TWO_POW_M64 = 2.0**-64
REFINE_COUNTER = 1 << 31        # refinement words of block b: Philox at counter b + 2**31
REFINE_SHIFT = 21               # refine where the top 11 bits of r0 are all 0 or all 1 ...
REFINE_TOP = (1 << (32 - REFINE_SHIFT)) - 1
REFINE_SCALE = 2.0**-11         # ... i.e. u or 1 - u below 2**-11: redrawn as 2**-11 u'
MAX_ROW_LENGTH = 2**32          # block indices b < 2**31 stay clear of REFINE_COUNTER


def _mulhilo32(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of the 64-bit product a*b, for uint32 values held in int64.

    Split into 16-bit limbs so no partial product overflows int64."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    mid = a_hi * b_lo + a_lo * b_hi  # < 2**33
    lo_full = a_lo * b_lo + ((mid & 0xFFFF) << 16)  # < 2**33
    hi = a_hi * b_hi + (mid >> 16) + (lo_full >> 32)
    return hi & MASK32, lo_full & MASK32


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 (Salmon et al. 2011) on int64 tensors holding uint32 values."""
    for r in range(rounds):
        if r > 0:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uint32_pair_to_unit_double(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """Two uint32 words -> float64 in (0, 1] from their top 53 bits (hi's 32, lo's top 21):
    k = hi * 2**21 + lo // 2**11 (exact in float64), u = (k + 0.5) * 2**-53, never 0."""
    k = (hi << 21) | (lo >> 11)
    return (k.to(torch.float64) + 0.5) * TWO_POW_M53


def uint32_pair_to_unit_double64(hi, lo):
    """Two uint32 words -> fl((hi 2**32 + lo + 1/2) 2**-64): all 64 bits, rounded once (both
    terms are exact in float64, so their sum is the only rounding)."""
    return hi.to(torch.float64) * TWO_POW_M32 + (lo.to(torch.float64) + 0.5) * TWO_POW_M64


def uint32_quad_to_unit_double(q0, q1, q2, q3):
    """Four uint32 words -> float64 in (0, 1) from 128 bits, ~ (q0 q1 q2 q3 + 1/2) 2**-128,
    by Horner's scheme in 2**-32 from the last word (the products are exact, each sum rounds
    once): full relative precision unless q0 = q1 = q2 = 0."""
    tail = q3.to(torch.float64) + 0.5
    tail = q2.to(torch.float64) + tail * TWO_POW_M32
    tail = q1.to(torch.float64) + tail * TWO_POW_M32
    return (q0.to(torch.float64) + tail * TWO_POW_M32) * TWO_POW_M32


def fine_radius_terms(r0, r1, q0, q1, q2, q3):
    """float64 inputs' radius uniform: (u, v = 1 - u, upper), each float64 to full relative
    precision, so that -log(u) shows no lattice at float64 resolution (issue 20).

    u and v are the 64 bits of (r0, r1) and their complement, each rounded once, so v is not
    the 2**-53 grid of 1 - fl(u). Above 2**-11 a float64 spans an even number of steps of
    2**-64 and the grid (W + 1/2) 2**-64 has no ties: each float64 gets exactly the
    probability of a continuous uniform rounded once. Where the top 11 bits of r0 are all 0
    (u < 2**-11) or all 1 (v < 2**-11) the 64-bit grid would show: the small one of u and v
    is redrawn as 2**-11 u' with u' the 128-bit uniform of the block's refinement words (q0,
    q1, q2, q3), Philox at counter (b + 2**31, j, id, s), and the other is fl(1 - it). Exact
    under the law of u: u is uniform on (0, 2**-11) given the top 11 bits. ``upper`` (r0's top bit): take
    -log1p(-v), else -log(u); every backend uses the same u, v, up to its log's rounding."""
    u = uint32_pair_to_unit_double64(r0, r1)
    v = uint32_pair_to_unit_double64(MASK32 - r0, MASK32 - r1)
    top = r0 >> REFINE_SHIFT
    w = uint32_quad_to_unit_double(q0, q1, q2, q3) * REFINE_SCALE
    u = torch.where(top == 0, w, torch.where(top == REFINE_TOP, 1.0 - w, u))
    v = torch.where(top == REFINE_TOP, w, torch.where(top == 0, 1.0 - w, v))
    return u, v, r0 >= 1 << 31


def check_row_dtypes(x_flat: torch.Tensor, *outs: torch.Tensor) -> None:
    """Noise rows are float32 or float64, like the x they are drawn around, and at most
    ``MAX_ROW_LENGTH`` elements long (the refinement counters lie above the blocks')."""
    if x_flat.shape[-1] > MAX_ROW_LENGTH:
        raise ValueError(f"noise rows hold at most 2**32 elements, got {x_flat.shape[-1]}")
    for out in outs:
        if x_flat.dtype not in (torch.float32, torch.float64) or out.dtype != x_flat.dtype:
            raise TypeError(f"noise rows are float32 or float64 like x, got x {x_flat.dtype}, "
                            f"out {out.dtype}")


def split_seed(seed: int):
    return seed & MASK32, (seed >> 32) & MASK32


def _philox_blocks(seed: int, ids, streams, js, n_blocks: int, device, first_block: int = 0):
    """Philox words (r0, r1, r2, r3), each (R, n_blocks), at counters (first_block + b, j, id,
    s)."""
    ids, streams, js = (torch.as_tensor(t, dtype=torch.int64, device=device).reshape(-1, 1)
                        for t in (ids, streams, js))
    blocks = torch.arange(first_block, first_block + n_blocks, dtype=torch.int64,
                          device=ids.device).reshape(1, -1)
    shape = torch.broadcast_shapes(blocks.shape, ids.shape)
    k0, k1 = split_seed(seed)
    return philox4x32(blocks.expand(shape), js.expand(shape), ids.expand(shape),
                      streams.expand(shape), k0, k1)


def gaussian_noise(seed: int, ids, streams, js, dim: int, device=None,
                   fine: bool = False) -> torch.Tensor:
    """Standard normal noise rows for samples (ids[r], streams[r], js[r]) -> float64 (R, dim).

    Block b = e // 2 gives u0 from words (r0, r1) and u1 from (r2, r3), 53 bits each, then
    one Box-Muller pair in float64: noise[2b] = rad cos th, noise[2b + 1] = rad sin th.
    ``fine`` (the noise of float64 inputs): the radius from ``fine_radius_terms`` instead."""
    n_blocks = (dim + 1) // 2
    r0, r1, r2, r3 = _philox_blocks(seed, ids, streams, js, n_blocks, device)
    if fine:
        u, v, upper = fine_radius_terms(r0, r1, *_philox_blocks(
            seed, ids, streams, js, n_blocks, device, first_block=REFINE_COUNTER))
        rad = torch.sqrt(-2.0 * torch.where(upper, torch.log1p(-v), torch.log(u)))
    else:
        rad = torch.sqrt(-2.0 * torch.log(uint32_pair_to_unit_double(r0, r1)))
    th = TWO_PI * uint32_pair_to_unit_double(r2, r3)
    z = torch.stack([rad * torch.cos(th), rad * torch.sin(th)], dim=-1)
    return z.reshape(z.shape[0], -1)[:, :dim].contiguous()


def noisy_rows(x: torch.Tensor, sigma: torch.Tensor, ids, seed: int, row_input, row_stream,
               row_j) -> torch.Tensor:
    """Reference of the fused op: out[r] = x[row_input[r]] + sigma[row_input[r]] * noise,
    computed in float64 and rounded once to x's dtype."""
    flat = x.reshape(x.shape[0], -1)
    row_input = torch.as_tensor(row_input, dtype=torch.int64, device=x.device)
    noise = gaussian_noise(seed, ids[row_input], row_stream, row_j, flat.shape[1], device=x.device,
                           fine=flat.dtype == torch.float64)
    scale = sigma.to(device=x.device, dtype=torch.float64)[row_input].unsqueeze(1)
    out = (flat[row_input].to(torch.float64) + scale * noise).to(flat.dtype)
    return out.reshape((-1,) + tuple(x.shape[1:]))
