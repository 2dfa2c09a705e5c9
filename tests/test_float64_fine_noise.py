"""float64 inputs' finer radius (issue 20, item 1): the radius uniform from 64 bits, its tails
redrawn from the block's refinement words (``philox_torch.fine_radius_terms``), on every CPU
backend as the reference computes it, and float32 inputs' rows unchanged by it.

The refined blocks (1 in 1024) are exercised on purpose: the batches below hold thousands of
them on both sides, and a backend skipping the refinement would put an unrelated radius there
(the redrawn uniform comes from other words), far outside the tolerance.
(The Triton kernels: tests/test_kernels_triton.py.)"""
import hashlib

import numba
import numpy as np
import pytest
import torch

from dualrs_fast.kernels import noise_numba, noise_numba_simd, philox_torch
from dualrs_fast.kernels.noise_numba import _fine_terms, _refined_terms, _refines
from dualrs_fast.kernels.noise_pair_numba import noisy_row_pairs_into
from dualrs_fast.kernels.noise_pair_torch import noisy_row_pairs

SEED = 2**40 + 17
KERNELS = {"numba": noise_numba.noisy_rows_into, "numba-simd": noise_numba_simd.noisy_rows_into}
# sha256 of the float32 rows of ``big_case`` written by every backend before float64 inputs
# got the finer radius (commit 4d3d999): float32 inputs' noise must not change
FLOAT32_ROWS_SHA256 = "8a1bd7a037a4d5fc303e611157d7b4fafc7eb9118ebd9698c9e6cec542aab4a5"


def big_case(dtype, rows=2048, dim=784):
    """An MNIST-sized packed batch: 3 inputs (600 background pixels each), per-input sigma,
    6 streams, rows of distinct sample indices."""
    torch.manual_seed(0)
    x = torch.rand(3, dim)
    x[:, :600] = 0
    sigma = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    ids = torch.tensor([0, 5, 123456])
    ri = torch.arange(rows) % 3
    return x.to(dtype), sigma, ids, ri, torch.arange(rows) % 6, torch.arange(rows) * 7 + 3


def refined_blocks(ids, ri, rs, rj, dim, seed=SEED):
    """(lower, upper): the blocks (R, (dim + 1) // 2) whose radius uniform is redrawn, u < 2**-11
    and 1 - u < 2**-11."""
    r0 = philox_torch._philox_blocks(seed, ids[ri], rs, rj, (dim + 1) // 2, None)[0]
    top = r0 >> philox_torch.REFINE_SHIFT
    return top == 0, top == philox_torch.REFINE_TOP


def unrefined_radius(ids, ri, rs, rj, dim, seed=SEED):
    """The radius the 64-bit uniform alone would give (a backend skipping the refinement)."""
    r0, r1, _, _ = philox_torch._philox_blocks(seed, ids[ri], rs, rj, (dim + 1) // 2, None)
    u = philox_torch.uint32_pair_to_unit_double64(r0, r1)
    v = philox_torch.uint32_pair_to_unit_double64(philox_torch.MASK32 - r0,
                                                  philox_torch.MASK32 - r1)
    return torch.sqrt(-2.0 * torch.where(r0 >= 2**31, torch.log1p(-v), torch.log(u)))


def _radius(rows, x, sigma, ri):
    """The pair radii |z| of rows (R, D even) drawn around x at sigma."""
    z = (rows - x[ri].to(rows.dtype)) / sigma[ri].unsqueeze(1)
    return torch.sqrt(z[:, 0::2] ** 2 + z[:, 1::2] ** 2)


def _sha(rows):
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def test_float32_rows_are_unchanged_on_every_cpu_backend():
    x, sigma, ids, ri, rs, rj = big_case(torch.float32)
    lower, upper = refined_blocks(ids, ri, rs, rj, x.shape[1])
    assert int(lower.sum()) > 300 and int(upper.sum()) > 300   # 392 expected per side
    assert _sha(philox_torch.noisy_rows(x, sigma, ids, SEED, ri, rs, rj)) == FLOAT32_ROWS_SHA256
    for backend, kernel in KERNELS.items():
        out = torch.empty(len(ri), x.shape[1])
        kernel(out, x, sigma, ids, SEED, ri, rs, rj, None)
        assert _sha(out) == FLOAT32_ROWS_SHA256, backend
        a, b = torch.empty_like(out), torch.empty_like(out)
        noisy_row_pairs_into(a, b, x, sigma, sigma * 2, ids, SEED, ri, rs, rj, backend=backend)
        assert _sha(a) == FLOAT32_ROWS_SHA256, backend
    a, _ = noisy_row_pairs(x, sigma, sigma * 2, ids, SEED, ri, rs, rj)
    assert _sha(a) == FLOAT32_ROWS_SHA256


@pytest.mark.parametrize("backend", list(KERNELS))
def test_float64_refined_blocks_match_the_reference(backend):
    x, sigma, ids, ri, rs, rj = big_case(torch.float64, rows=1024)
    lower, upper = refined_blocks(ids, ri, rs, rj, x.shape[1])
    assert int(lower.sum()) > 150 and int(upper.sum()) > 150
    ref = philox_torch.noisy_rows(x, sigma, ids, SEED, ri, rs, rj)
    # the refinement matters: skipping it moves the radius of (nearly) every refined block
    moved = (_radius(ref, x, sigma, ri) - unrefined_radius(ids, ri, rs, rj, x.shape[1])).abs()
    for side in (lower, upper):
        assert float((moved[side] > 1e-6).float().mean()) > 0.95
        assert float(moved[~(lower | upper)].max()) < 1e-13
    out = torch.full_like(ref, float("nan"))
    KERNELS[backend](out, x, sigma, ids, SEED, ri, rs, rj, None)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)
    a, b = torch.full_like(ref, float("nan")), torch.full_like(ref, float("nan"))
    noisy_row_pairs_into(a, b, x, sigma, sigma * 2, ids, SEED, ri, rs, rj, backend=backend)
    assert torch.equal(a, out)
    ref_b = noisy_row_pairs(x, sigma, sigma * 2, ids, SEED, ri, rs, rj)[1]
    torch.testing.assert_close(b, ref_b, rtol=0, atol=1e-13)


@numba.njit
def _numba_fine_terms(r0, r1, b, c1, c2, c3, k0, k1):
    u, v = np.empty(len(r0)), np.empty(len(r0))
    for n in range(len(r0)):
        if _refines(r0[n]):
            u[n], v[n] = _refined_terms(r0[n], b[n], c1[n], c2[n], c3[n], k0, k1)
        else:
            u[n], v[n] = _fine_terms(r0[n], r1[n])
    return u, v


def test_numba_fine_uniforms_are_the_references_bit_for_bit():
    rows, n_blocks = 64, 8000
    ids, streams, js = torch.arange(rows) % 5, torch.arange(rows) % 6, torch.arange(rows) * 3
    r0, r1, _, _ = philox_torch._philox_blocks(SEED, ids, streams, js, n_blocks, None)
    q = philox_torch._philox_blocks(SEED, ids, streams, js, n_blocks, None,
                                    first_block=philox_torch.REFINE_COUNTER)
    u, v, _ = philox_torch.fine_radius_terms(r0, r1, *q)
    k0, k1 = philox_torch.split_seed(SEED)
    flat = [t.expand(rows, n_blocks).reshape(-1).numpy().astype(np.uint32) for t in
            (r0, r1, torch.arange(n_blocks)[None], js[:, None], ids[:, None], streams[:, None])]
    got_u, got_v = _numba_fine_terms(*flat, np.uint32(k0), np.uint32(k1))
    assert np.array_equal(got_u, u.reshape(-1).numpy())
    assert np.array_equal(got_v, v.reshape(-1).numpy())
    top = (r0 >> philox_torch.REFINE_SHIFT).reshape(-1).numpy()
    assert (top == 0).sum() > 200 and (top == philox_torch.REFINE_TOP).sum() > 200


def test_fine_uniforms_have_full_relative_precision():
    # u + v = 1 to rounding, each to float64's relative precision, down to the smallest
    rows, n_blocks = 64, 4000
    args = (SEED, torch.arange(rows), torch.ones(rows), torch.arange(rows), n_blocks, None)
    r0, r1, _, _ = philox_torch._philox_blocks(*args)
    q = philox_torch._philox_blocks(*args, first_block=philox_torch.REFINE_COUNTER)
    u, v, upper = philox_torch.fine_radius_terms(r0, r1, *q)
    assert torch.all((u > 0) & (v > 0) & (u <= 1) & (v <= 1))
    assert torch.all((u + v - 1).abs() <= 2**-52)
    small = torch.minimum(u, v)
    assert float(small.min()) < 2**-17                          # the refined tail reaches
    # the small side's low mantissa bits are uniform (no coarser grid): its last 8 bits
    mantissa = small.view(torch.int64) & 255
    counts = torch.bincount(mantissa.reshape(-1), minlength=256).double()
    expected = counts.sum() / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < 256 + 6 * (2 * 256) ** 0.5
    assert torch.equal(upper, r0 >= 2**31)


def test_fine_noise_known_values():
    # pinned: a block refined on each side and a plain one (float64 inputs' specification)
    seed, ids, streams, js = 0x0123456789ABCDEF, [0, 7], [1, 3], [5, 2**32 - 1]
    z = philox_torch.gaussian_noise(seed, ids, streams, js, 32768, fine=True)
    lower, upper = refined_blocks(torch.tensor(ids), torch.tensor([0, 1]), torch.tensor(streams),
                                  torch.tensor(js), 32768, seed)
    picks = [int(lower[0].nonzero()[0]), int(upper[0].nonzero()[0]), 0]
    got = [float.hex(float(z[0, 2 * b])) for b in picks]
    assert got == PINNED, got


PINNED = ['-0x1.f57e2c4fc3532p+1', '-0x1.13b24f866b85cp-8', '0x1.7daa86d5d2703p-1']


def test_rows_longer_than_2_pow_32_are_refused():
    x = torch.zeros(1, 1).expand(1, 2**32 + 1)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        philox_torch.check_row_dtypes(x, x)
