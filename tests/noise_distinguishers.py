"""Distinguishers between the engine's noisy inputs and fl(x + sigma z) with z exactly Gaussian
(issue 20, item 1), and the noise of the old float32 specification they were built against.

Each distinguisher looks at the coordinates whose clean value is 0 (the background of an
MNIST digit, which a model may know) and returns a z-score: about N(0, 1) under genuine
Gaussian noise, far below 0 when the noise carries the float32 Box-Muller structure.
"""
import math

import numpy as np
import torch

from dualrs_fast.kernels import noise_numba, noise_numba_simd, philox_torch

# th in [4, 2 pi): the float32 grid of the old Box-Muller angle has spacing 2**-21 there
ANGLE_LOW, ANGLE_SPACING = 4.0, 2.0**-21
# small radii: the old u = 1 - m 2**-24 made -log(u) a function of an integer m
RADIUS_MAX_T, RADIUS_SPACING = 0.02, 2.0**-24


def _pairs(rows: torch.Tensor, background: int):
    """Pairs (2k, 2k + 1) of background coordinates, float64, each (R, background // 2)."""
    v = rows.reshape(len(rows), -1)[:, :background].double()
    return v[:, 0::2], v[:, 1::2]


def _grid_distance(t: torch.Tensor, spacing: float) -> torch.Tensor:
    """Distance of t / spacing to the nearest integer, in [0, 1/2]."""
    f = t / spacing
    return (f - torch.round(f)).abs()


def _score(d: torch.Tensor, keep: torch.Tensor, per_row: bool):
    """z-score of the mean of the kept d, for d uniform on [0, 1/2] (mean 1/4, variance
    1/48): per row (a tensor) or pooled over all rows (a float)."""
    dims = 1 if per_row else None
    n = keep.sum(dims) if per_row else keep.sum()
    total = torch.where(keep, d, torch.zeros_like(d)).sum(dims) if per_row else d[keep].sum()
    n = torch.as_tensor(n, dtype=torch.float64).clamp_min(1)
    z = (total / n - 0.25) / torch.sqrt(1.0 / 48.0 / n)
    return z if per_row else float(z)


def angle_lattice_score(rows: torch.Tensor, background: int, per_row: bool = False):
    """Needs neither sigma nor the seed: the angle of each pair (2k, 2k+1) of background
    coordinates, atan2(x_noisy[2k+1], x_noisy[2k]), measured against the float32 grid."""
    v0, v1 = _pairs(rows, background)
    th = torch.atan2(v1, v0) % (2 * math.pi)
    keep = (th >= ANGLE_LOW) & (th < 2 * math.pi - 1e-6)
    return _score(_grid_distance(th, ANGLE_SPACING), keep, per_row)


def radius_lattice_score(rows: torch.Tensor, background: int, sigma: float,
                         per_row: bool = False):
    """With sigma known: t = rad**2 / 2 of small-radius pairs, mapped back to 1 - u = 1 - e**-t
    and measured against the float32 grid of u just below 1."""
    v0, v1 = _pairs(rows, background)
    t = (v0 * v0 + v1 * v1) / (2 * sigma * sigma)
    return _score(_grid_distance(-torch.expm1(-t), RADIUS_SPACING), t < RADIUS_MAX_T, per_row)


# the tail of the radius: u = e**-t below about 2**-8 (t > 5.5, 1 pair in 250), reaching
# below 2**-11, where float64 inputs' radius uniform is redrawn from the refinement words
TAIL_T_MIN = 5.5


def radius_lattice_score_f64(rows: torch.Tensor, background: int, sigma: float,
                             t_max: float = 0.01, tail: bool = False) -> float:
    """The radius test at float64 resolution (float64 rows, sigma known): 1 - e**-t (small
    radii, t < t_max) or, with ``tail``, u = e**-t itself (large radii, t > TAIL_T_MIN)
    against the 2**-53 grid of 53-bit uniforms, computed in long double (64-bit mantissa)."""
    v = rows.reshape(len(rows), -1)[:, :background].numpy().astype(np.longdouble)
    t = (v[:, 0::2] ** 2 + v[:, 1::2] ** 2) / np.longdouble(2 * sigma * sigma)
    if tail:
        m = np.exp(-t[t > TAIL_T_MIN]) * np.longdouble(2.0**53)
    else:
        m = -np.expm1(-t[t < t_max]) * np.longdouble(2.0**53)
    d = torch.from_numpy(np.abs(m - np.round(m)).astype(np.float64))
    return _score(d, torch.ones_like(d, dtype=torch.bool), per_row=False)


def angle_axis_score_f64(rows: torch.Tensor, background: int, width: float = 0.01) -> float:
    """Needs neither sigma nor the seed: pairs whose angle th = atan2(x1, x0) lies within
    ``width`` above 0 (the angle uniform near 0), th / (2 pi) against the 2**-53 grid, in long
    double. The angle's relative precision there exceeds the uniform's."""
    v = rows.reshape(len(rows), -1)[:, :background].numpy().astype(np.longdouble)
    v0, v1 = v[:, 0::2], v[:, 1::2]
    keep = (v0 > 0) & (v1 > 0) & (v1 < width * v0)
    m = np.arctan(v1[keep] / v0[keep]) / (2 * np.pi) * np.longdouble(2.0**53)
    d = torch.from_numpy(np.abs(m - np.round(m)).astype(np.float64))
    return _score(d, torch.ones_like(d, dtype=torch.bool), per_row=False)


def background_input(dim: int, background: int, seed: int = 0) -> torch.Tensor:
    """(1, dim) float32: zeros in the first ``background`` coordinates, pixels after."""
    x = torch.rand(1, dim, generator=torch.Generator().manual_seed(seed))
    x[:, :background] = 0.0
    return x


def engine_rows(backend: str, x: torch.Tensor, sigma: float, rows: int, seed: int,
                first_j: int = 0) -> torch.Tensor:
    """``rows`` noisy copies of x (1, D) from one CPU backend's kernel (stream 1, id 0)."""
    sig = torch.tensor([sigma], dtype=torch.float64)
    ids, ri = torch.tensor([0]), torch.zeros(rows, dtype=torch.int64)
    rs, rj = torch.ones(rows, dtype=torch.int64), torch.arange(first_j, first_j + rows)
    if backend == "torch":
        return philox_torch.noisy_rows(x, sig, ids, seed, ri, rs, rj)
    out = torch.empty(rows, x.shape[1], dtype=x.dtype)
    kernel = noise_numba if backend == "numba" else noise_numba_simd
    kernel.noisy_rows_into(out, x, sig, ids, seed, ri, rs, rj, None)
    return out


def gaussian_rows(x: torch.Tensor, sigma: float, rows: int, seed: int) -> torch.Tensor:
    """fl32(x + sigma z), z from numpy's float64 normal generator, rounded once."""
    z = np.random.default_rng(seed).standard_normal((rows, x.shape[1]))
    return torch.from_numpy(x.double().numpy() + sigma * z).to(x.dtype)


def old_float64_rows(x: torch.Tensor, sigma: float, rows: int, seed: int) -> torch.Tensor:
    """float64 rows of the noise float64 inputs had before their finer radius: 53-bit
    uniforms (float32 inputs' noise, unrounded), at ``engine_rows``'s counters."""
    z = philox_torch.gaussian_noise(seed, torch.zeros(rows, dtype=torch.int64),
                                    torch.ones(rows, dtype=torch.int64), torch.arange(rows),
                                    x.shape[1])
    return x.double() + sigma * z


def old_float32_rows(x: torch.Tensor, sigma: float, rows: int, seed: int) -> torch.Tensor:
    """The noise of the old float32 specification, frozen: Philox at counter (e // 4, j, 0, 1),
    u = (float32(r) + 0.5) 2**-32 and Box-Muller in float32, x + float32(sigma) z in float32."""
    dim = x.shape[1]
    blocks = torch.arange((dim + 3) // 4, dtype=torch.int64)[None, :].expand(rows, -1)
    js = torch.arange(rows, dtype=torch.int64)[:, None].expand_as(blocks)
    zero, one = torch.zeros_like(blocks), torch.ones_like(blocks)
    k0, k1 = philox_torch.split_seed(seed)
    r = philox_torch.philox4x32(blocks, js, zero, one, k0, k1)
    u = [(w.to(torch.float32) + 0.5) * 2.0**-32 for w in r]
    two_pi = np.float32(2 * math.pi)
    rad01, rad23 = (torch.sqrt(-2.0 * torch.log(u[k])) for k in (0, 2))
    th01, th23 = two_pi * u[1], two_pi * u[3]
    z = torch.stack([rad01 * torch.cos(th01), rad01 * torch.sin(th01),
                     rad23 * torch.cos(th23), rad23 * torch.sin(th23)], -1).reshape(rows, -1)
    return x + np.float32(sigma) * z[:, :dim]
