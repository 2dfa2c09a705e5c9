"""Plain-PyTorch reference of the counter-based Gaussian noise (the specification).

Slow (int64 arithmetic emulating uint32), used by tests and as the fallback on devices
without a fused kernel. Every other backend must reproduce it up to float64 rounding in
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


def check_row_dtypes(x_flat: torch.Tensor, *outs: torch.Tensor) -> None:
    """Noise rows are float32 or float64, like the x they are drawn around."""
    for out in outs:
        if x_flat.dtype not in (torch.float32, torch.float64) or out.dtype != x_flat.dtype:
            raise TypeError(f"noise rows are float32 or float64 like x, got x {x_flat.dtype}, "
                            f"out {out.dtype}")


def split_seed(seed: int):
    return seed & MASK32, (seed >> 32) & MASK32


def _philox_blocks(seed: int, ids, streams, js, n_blocks: int, device):
    """Philox words (r0, r1, r2, r3), each (R, n_blocks), at counters (b, j, id, s)."""
    ids, streams, js = (torch.as_tensor(t, dtype=torch.int64, device=device).reshape(-1, 1)
                        for t in (ids, streams, js))
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=ids.device).reshape(1, -1)
    shape = torch.broadcast_shapes(blocks.shape, ids.shape)
    k0, k1 = split_seed(seed)
    return philox4x32(blocks.expand(shape), js.expand(shape), ids.expand(shape),
                      streams.expand(shape), k0, k1)


def gaussian_noise(seed: int, ids, streams, js, dim: int, device=None) -> torch.Tensor:
    """Standard normal noise rows for samples (ids[r], streams[r], js[r]) -> float64 (R, dim).

    Block b = e // 2 gives u0 from words (r0, r1) and u1 from (r2, r3), 53 bits each, then
    one Box-Muller pair in float64: noise[2b] = rad cos th, noise[2b + 1] = rad sin th."""
    r0, r1, r2, r3 = _philox_blocks(seed, ids, streams, js, (dim + 1) // 2, device)
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
    noise = gaussian_noise(seed, ids[row_input], row_stream, row_j, flat.shape[1], device=x.device)
    scale = sigma.to(device=x.device, dtype=torch.float64)[row_input].unsqueeze(1)
    out = (flat[row_input].to(torch.float64) + scale * noise).to(flat.dtype)
    return out.reshape((-1,) + tuple(x.shape[1:]))
