"""The counter-based noise: Philox known answers, numba kernel == PyTorch reference, and
the statistics and independence a certificate relies on."""
import numba
import numpy as np
import pytest
import scipy.stats
import torch

from dualrs_fast.kernels import philox_torch
from dualrs_fast.kernels.noise_numba import noisy_rows_into


def _t(v):
    return torch.tensor([v], dtype=torch.int64)


@pytest.mark.parametrize("ctr,key,expected", [
    # Known-answer vectors of Random123's philox4x32-10 (kat_vectors).
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(ctr, key, expected):
    out = philox_torch.philox4x32(*(_t(c) for c in ctr), *key)
    assert tuple(int(v) for v in out) == expected


def _numba_rows(x, sigma, ids, seed, ri, rs, rj, dest=None):
    flat = x.reshape(x.shape[0], -1).contiguous()
    out = torch.empty(len(ri), flat.shape[1], dtype=flat.dtype)
    dest = torch.arange(flat.shape[1]) if dest is None else dest
    noisy_rows_into(out, flat, sigma.to(flat.dtype), ids, seed, ri, rs, rj, dest)
    return out


@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (785,), (3, 7, 9), (1, 28, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_matches_reference_on_odd_shapes(shape, dtype):
    g = torch.Generator().manual_seed(0)
    B, R = 4, 37
    x = torch.rand((B,) + shape, generator=g, dtype=dtype)
    sigma = torch.tensor([0.12, 0.25, 0.5, 1.0], dtype=dtype)
    ids = torch.tensor([0, 3, 2**32 - 1, 12345])
    ri = torch.randint(0, B, (R,), generator=g)
    rs = torch.randint(0, 6, (R,), generator=g)
    rj = torch.randint(0, 2**32, (R,), generator=g)
    seed = 0xDEADBEEFCAFEF00D
    ref = philox_torch.noisy_rows(x, sigma, ids, seed, ri, rs, rj).reshape(R, -1)
    got = _numba_rows(x, sigma, ids, seed, ri, rs, rj)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_noise_is_standard_normal():
    z = philox_torch.gaussian_noise(7, torch.zeros(400), torch.ones(400), torch.arange(400), 1000)
    z = z.double().flatten().numpy()
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
    assert scipy.stats.kstest(z[:100_000], "norm").pvalue > 1e-3


def test_rows_of_different_counters_are_independent():
    # Adjacent samples, streams, ids and elements must not be correlated.
    base = dict(ids=torch.zeros(2000), streams=torch.zeros(2000), js=torch.arange(2000))
    z = philox_torch.gaussian_noise(3, **base, dim=64).double()
    other = {
        "next sample": philox_torch.gaussian_noise(3, base["ids"], base["streams"], base["js"] + 1, 64),
        "next stream": philox_torch.gaussian_noise(3, base["ids"], base["streams"] + 1, base["js"], 64),
        "next id": philox_torch.gaussian_noise(3, base["ids"] + 1, base["streams"], base["js"], 64),
        "next seed": philox_torch.gaussian_noise(4, **base, dim=64),
    }
    for name, o in other.items():
        corr = np.corrcoef(z.flatten().numpy(), o.double().flatten().numpy())[0, 1]
        assert abs(corr) < 0.02, name
    # elements within a sample (e, e+1 share a Philox block: Box-Muller pairs are independent)
    corr = np.corrcoef(z[:, 0::2].flatten().numpy(), z[:, 1::2].flatten().numpy())[0, 1]
    assert abs(corr) < 0.02


def test_numba_kernel_thread_count_invariant():
    x = torch.rand(3, 1, 28, 28)
    sigma = torch.tensor([0.25, 0.5, 1.0])
    ids = torch.arange(3)
    ri = torch.arange(300) % 3
    rs = torch.zeros(300, dtype=torch.int64)
    rj = torch.arange(300)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _numba_rows(x, sigma, ids, 11, ri, rs, rj)
        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS))
        many = _numba_rows(x, sigma, ids, 11, ri, rs, rj)
    finally:
        numba.set_num_threads(before)
    assert torch.equal(one, many)


def test_channels_last_destination_is_a_permutation_of_the_same_noise():
    from dualrs_fast.sampling import _channels_last_dest
    x = torch.rand(2, 3, 5, 4)
    dest = _channels_last_dest(x.shape[1:])
    ri, rs, rj = torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([5, 6])
    sigma = torch.tensor([0.5, 0.5])
    nchw = _numba_rows(x, sigma, torch.arange(2), 9, ri, rs, rj)
    nhwc = _numba_rows(x, sigma, torch.arange(2), 9, ri, rs, rj, dest=dest)
    as_nchw = nhwc.view(2, 5, 4, 3).permute(0, 3, 1, 2).reshape(2, -1)
    assert torch.equal(as_nchw, nchw)
