"""The shared-noise pair kernels (one z, two noise levels): each output equals the
single-output kernel of the same backend at its sigma with the same counters, bit for bit,
and the plain PyTorch reference up to the backends' usual float64 rounding, on odd shapes.
(The Triton pair kernel: tests/test_kernels_triton.py.)"""
import numba
import pytest
import torch

from dualrs_fast.kernels import noise_numba, noise_numba_simd, philox_torch
from dualrs_fast.kernels.noise_pair_numba import noisy_row_pairs_into
from dualrs_fast.kernels.noise_pair_torch import noisy_row_pairs
from dualrs_fast.noise import fill_noisy_row_pairs, fill_noisy_rows
from dualrs_fast.sampling import _channels_last_dest
from test_noise_kernels import assert_same_noise

SINGLE = {"numba": noise_numba.noisy_rows_into, "numba-simd": noise_numba_simd.noisy_rows_into}
SEED = 0xDEADBEEFCAFEF00D


def _case(shape, dtype, batch=4, rows=37, seed=0):
    """x (B, *shape), two sigmas per input (an estimator's constant one and per-input levels),
    ids at the counter's extremes, and random rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch,) + shape, generator=g, dtype=dtype)
    sigma_a = torch.full((batch,), 1.0, dtype=torch.float64)
    sigma_b = torch.tensor([0.12, 0.25, 0.5, 1.0], dtype=torch.float64)[:batch]
    ids = torch.tensor([0, 3, 2**32 - 1, 12345])[:batch]
    ri = torch.randint(0, batch, (rows,), generator=g)
    rs = torch.randint(0, 6, (rows,), generator=g)
    rj = torch.randint(0, 2**32, (rows,), generator=g)
    return x, sigma_a, sigma_b, ids, ri, rs, rj


def _pair(backend, flat, sigma_a, sigma_b, ids, ri, rs, rj, dest=None):
    out_a = torch.full((len(ri), flat.shape[1]), float("nan"), dtype=flat.dtype)
    out_b = torch.full_like(out_a, float("nan"))
    noisy_row_pairs_into(out_a, out_b, flat, sigma_a, sigma_b, ids, SEED, ri, rs, rj, dest,
                         backend=backend)
    return out_a, out_b


def _single(backend, flat, sigma, ids, ri, rs, rj, dest=None):
    out = torch.full((len(ri), flat.shape[1]), float("nan"), dtype=flat.dtype)
    SINGLE[backend](out, flat, sigma, ids, SEED, ri, rs, rj, dest)
    return out


@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (785,), (3, 7, 9), (1, 28, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_pair_is_the_reference_at_each_sigma(shape, dtype):
    x, sigma_a, sigma_b, ids, ri, rs, rj = _case(shape, dtype)
    a, b = noisy_row_pairs(x, sigma_a, sigma_b, ids, SEED, ri, rs, rj)
    assert torch.equal(a, philox_torch.noisy_rows(x, sigma_a, ids, SEED, ri, rs, rj))
    assert torch.equal(b, philox_torch.noisy_rows(x, sigma_b, ids, SEED, ri, rs, rj))
    # one z: (a - x) / sigma_a and (b - x) / sigma_b agree (float64 rows: to rounding)
    if dtype == torch.float64:
        base = x.reshape(x.shape[0], -1)[ri].reshape(a.shape)
        torch.testing.assert_close((a - base) / sigma_a[ri].reshape((-1,) + (1,) * len(shape)),
                                   (b - base) / sigma_b[ri].reshape((-1,) + (1,) * len(shape)),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "numba-simd"])
@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (785,), (3, 7, 9), (1, 28, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_pair_equals_two_single_kernels_and_the_reference(backend, shape, dtype):
    x, sigma_a, sigma_b, ids, ri, rs, rj = _case(shape, dtype)
    flat = x.reshape(x.shape[0], -1).contiguous()
    a, b = _pair(backend, flat, sigma_a, sigma_b, ids, ri, rs, rj)
    assert torch.equal(a, _single(backend, flat, sigma_a, ids, ri, rs, rj))
    assert torch.equal(b, _single(backend, flat, sigma_b, ids, ri, rs, rj))
    ref_a, ref_b = noisy_row_pairs(flat, sigma_a, sigma_b, ids, SEED, ri, rs, rj)
    assert_same_noise(a, ref_a)
    assert_same_noise(b, ref_b)


@pytest.mark.parametrize("backend", ["numba", "numba-simd"])
@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 3, 3), (4, 1, 9)])
def test_numba_pair_writes_channels_last_rows(backend, shape):
    x, sigma_a, sigma_b, ids, ri, rs, rj = _case(shape, torch.float32, rows=9, seed=1)
    flat = x.reshape(x.shape[0], -1).contiguous()
    dest = _channels_last_dest(shape)
    a, b = _pair(backend, flat, sigma_a, sigma_b, ids, ri, rs, rj, dest)
    assert torch.equal(a, _single(backend, flat, sigma_a, ids, ri, rs, rj, dest))
    assert torch.equal(b, _single(backend, flat, sigma_b, ids, ri, rs, rj, dest))


@pytest.mark.parametrize("backend", ["numba", "numba-simd"])
def test_numba_pair_fills_row_ranges_and_is_thread_count_invariant(backend):
    x, sigma_a, sigma_b, ids, ri, rs, rj = _case((1, 28, 28), torch.float32, rows=300, seed=2)
    flat = x.reshape(x.shape[0], -1).contiguous()
    buf_a, buf_b = torch.full((310, 784), -7.0), torch.full((310, 784), -7.0)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        noisy_row_pairs_into(buf_a[:300], buf_b[:300], flat, sigma_a, sigma_b, ids, SEED, ri, rs,
                             rj, backend=backend)
        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS))
        many = _pair(backend, flat, sigma_a, sigma_b, ids, ri, rs, rj)
    finally:
        numba.set_num_threads(before)
    assert torch.all(buf_a[300:] == -7.0) and torch.all(buf_b[300:] == -7.0)
    assert torch.equal(buf_a[:300], many[0]) and torch.equal(buf_b[:300], many[1])


@pytest.mark.parametrize("backend", ["torch", "numba", "numba-simd"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dispatch_pairs_equal_two_single_fills(backend, channels_last):
    shape = (3, 5, 4)
    x, sigma_a, sigma_b, ids, ri, rs, rj = _case(shape, torch.float32, rows=11, seed=3)
    flat = x.reshape(x.shape[0], -1).contiguous()
    dest = _channels_last_dest(shape) if channels_last else None
    cl = shape if channels_last else None
    outs = [torch.full((11, flat.shape[1]), float("nan")) for _ in range(4)]
    fill_noisy_row_pairs(outs[0], outs[1], flat, sigma_a, sigma_b, ids, SEED, ri, rs, rj, dest,
                         backend, channels_last_shape=cl)
    for out, sigma in zip(outs[2:], (sigma_a, sigma_b)):
        fill_noisy_rows(out, flat, sigma, ids, SEED, ri, rs, rj, dest, backend,
                        channels_last_shape=cl)
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])


def test_pair_kernels_refuse_mismatched_outputs():
    x, sigma_a, sigma_b, ids, ri, rs, rj = _case((5,), torch.float32, rows=3)
    flat = x.reshape(x.shape[0], -1).contiguous()
    good = torch.empty(3, 5)
    with pytest.raises(TypeError, match="float32 or float64"):
        noisy_row_pairs_into(good, torch.empty(3, 5, dtype=torch.float64), flat, sigma_a, sigma_b,
                             ids, SEED, ri, rs, rj)
    with pytest.raises(ValueError, match="differ in shape"):
        noisy_row_pairs_into(good, torch.empty(2, 5), flat, sigma_a, sigma_b, ids, SEED, ri, rs,
                             rj)
    with pytest.raises(ValueError, match="no numba pair kernel"):
        noisy_row_pairs_into(good, torch.empty(3, 5), flat, sigma_a, sigma_b, ids, SEED, ri, rs,
                             rj, backend="triton")
