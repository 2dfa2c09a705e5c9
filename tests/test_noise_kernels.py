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


def assert_same_noise(got: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 rows: bit for bit, but for at most 2 elements one float32 ulp apart (x + sigma z
    within a few float64 ulps of a rounding boundary, where float64 log/sin/cos of two C
    libraries may round to either side); float64 rows: within a few float64 ulps."""
    if got.dtype == torch.float32:
        differ = got != ref
        assert int(differ.sum()) <= 2, int(differ.sum())
        step = torch.nextafter(ref[differ], torch.full_like(ref[differ], float("inf"))) - ref[differ]
        assert torch.all((got[differ] - ref[differ]).abs() <= step.abs())
    else:
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)


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
    assert_same_noise(got, ref)


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


# --- the two-pass numba kernel draws bit-for-bit the noise of a plain one-pass kernel

import math  # noqa: E402

from dualrs_fast.kernels.noise_numba import (_fine_terms, _philox, _refined_terms,  # noqa: E402
                                             _refines)


@numba.njit
def _one_pass_kernel(x, sigma, ids, k0, k1, row_input, row_stream, row_j, dest, fine, out):
    """The specification written as one loop (one Philox call and Box-Muller per block;
    ``fine``: float64 inputs' radius, ``philox_torch.fine_radius_terms``)."""
    dim = x.shape[1]
    for r in range(out.shape[0]):
        i = row_input[r]
        s = np.float64(sigma[i])
        for b in range((dim + 1) // 2):
            c1, c2, c3 = np.uint32(row_j[r]), np.uint32(ids[i]), np.uint32(row_stream[r])
            r0, r1, r2, r3 = _philox(np.uint32(b), c1, c2, c3, k0, k1)
            u0 = (np.float64((np.uint64(r0) << np.uint64(21)) | (np.uint64(r1) >> np.uint64(11)))
                  + 0.5) * 2.0**-53
            u1 = (np.float64((np.uint64(r2) << np.uint64(21)) | (np.uint64(r3) >> np.uint64(11)))
                  + 0.5) * 2.0**-53
            rad = math.sqrt(-2.0 * math.log(u0))
            if fine:
                if _refines(r0):
                    u, v = _refined_terms(r0, b, c1, c2, c3, k0, k1)
                else:
                    u, v = _fine_terms(r0, r1)
                rad = math.sqrt(-2.0 * (math.log1p(-v) if r0 >= 2**31 else math.log(u)))
            th = 2.0 * math.pi * u1
            e = 2 * b
            out[r, dest[e]] = np.float64(x[i, e]) + s * (rad * math.cos(th))
            if e + 1 < dim:
                out[r, dest[e + 1]] = np.float64(x[i, e + 1]) + s * (rad * math.sin(th))


@pytest.mark.parametrize("dim", [1, 3, 4, 5, 63, 784, 3073])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("permuted", [False, True])
def test_numba_kernel_is_bit_identical_to_the_one_pass_kernel(dim, dtype, permuted):
    g = torch.Generator().manual_seed(dim)
    B, R = 3, 41  # R > the kernel's row chunk, not a multiple of it
    x = torch.rand(B, dim, generator=g, dtype=dtype)
    sigma = torch.tensor([0.12, 0.5, 1.0], dtype=torch.float64)
    ids = torch.tensor([0, 2**32 - 1, 77])
    ri = torch.randint(0, B, (R,), generator=g)
    rs = torch.randint(0, 6, (R,), generator=g)
    rj = torch.randint(0, 2**32, (R,), generator=g)
    dest = torch.randperm(dim, generator=g) if permuted else None
    seed = 0x0123456789ABCDEF
    got = torch.full((R, dim), float("nan"), dtype=dtype)
    noisy_rows_into(got, x, sigma, ids, seed, ri, rs, rj, dest)
    want = torch.full((R, dim), float("nan"), dtype=dtype)
    k0, k1 = philox_torch.split_seed(seed)
    _one_pass_kernel(x.numpy(), sigma.numpy(), ids.numpy(), np.uint32(k0), np.uint32(k1),
                     ri.numpy(), rs.numpy(), rj.numpy(),
                     (torch.arange(dim) if dest is None else dest).numpy(),
                     dtype == torch.float64, want.numpy())
    assert torch.equal(got, want)


def test_numba_identity_dest_and_row_range_of_a_buffer():
    x = torch.rand(2, 50)
    args = (x, torch.tensor([0.5, 1.0]), torch.arange(2), 4, torch.tensor([0, 1, 1]),
            torch.ones(3, dtype=torch.int64), torch.tensor([0, 5, 6]))
    a = torch.empty(3, 50)
    noisy_rows_into(a, *args, None)
    b = torch.empty(3, 50)
    noisy_rows_into(b, *args, torch.arange(50))
    buf = torch.full((8, 50), -3.0)
    noisy_rows_into(buf[:3], *args, None)
    assert torch.equal(a, b) and torch.equal(buf[:3], a) and torch.all(buf[3:] == -3.0)


def test_noise_backend_resolution(monkeypatch):
    from dualrs_fast.noise import resolve_backend
    from dualrs_fast import noise
    cpu = torch.device("cpu")
    # auto takes the vectorised kernel only where its polynomials vectorise (AVX2 + FMA)
    for has_simd, expected in ((True, "numba-simd"), (False, "numba")):
        monkeypatch.setattr(noise, "cpu_has_avx2_fma", lambda: has_simd)
        assert resolve_backend("auto", cpu) == expected
    monkeypatch.undo()
    assert noise.cpu_has_avx2_fma() in (True, False)
    assert resolve_backend("numba", cpu) == "numba"
    assert resolve_backend("numba-simd", cpu) == "numba-simd"
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton"):
        resolve_backend("triton", cpu)
    with pytest.raises(ValueError):
        resolve_backend("cuda-magic", cpu)


@pytest.mark.parametrize("cpu,features,expected", [
    ("generic", None, False), ("haswell", "+avx,+avx2,+fma", True),
    ("sandybridge", "+avx,-avx2,-fma", False), (None, None, None)])
def test_simd_default_follows_numbas_target_cpu(monkeypatch, cpu, features, expected):
    # a portable numba target (NUMBA_CPU_NAME=generic) would not vectorise numba-simd
    from llvmlite import binding
    from dualrs_fast import noise
    monkeypatch.setattr(numba.config, "CPU_NAME", cpu)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    noise.cpu_has_avx2_fma.cache_clear()
    try:
        if expected is None:  # numba targets this host
            host = binding.get_host_cpu_features()
            expected = bool(host.get("avx2")) and bool(host.get("fma"))
        assert noise.cpu_has_avx2_fma() is expected
    finally:
        noise.cpu_has_avx2_fma.cache_clear()


def test_torch_and_numba_backends_give_the_same_certificates():
    import dualrs_fast as drs
    from analytic import LinearBinary
    g = torch.Generator().manual_seed(6)
    model = LinearBinary(torch.randn(2 * 5 * 5, generator=g), 0.05)
    x = torch.rand(4, 2, 5, 5, generator=g)
    a = drs.certify(model, x, sigma=0.5, n0=10, n=300, batch_size=128, seed=0,
                    noise_backend="numba")
    b = drs.certify(model, x, sigma=0.5, n0=10, n=300, batch_size=77, seed=0,
                    noise_backend="torch")
    assert torch.equal(a.count, b.count) and torch.equal(a.prediction, b.prediction)


# --- the vectorised kernel (noise_backend="numba-simd", the CPU default with AVX2 + FMA): the
# same noise as the libm kernel up to rounding

from dualrs_fast.kernels import noise_numba_simd  # noqa: E402


def _all_unit_doubles(count=400_000):
    """A spread of the 53-bit uniforms the kernels can see, with both ends (2**-54, 1.0)."""
    g = np.random.default_rng(0)
    words = g.integers(0, 2**32, (2, count), dtype=np.uint64)
    words = np.concatenate([words, np.array([[0, 0, 2**32 - 1, 2**32 - 1, 2**31],
                                             [0, 2**11, 2**32 - 2**11, 2**32 - 1, 0]],
                                            dtype=np.uint64)], 1)
    u = philox_torch.uint32_pair_to_unit_double(torch.from_numpy(words[0].astype(np.int64)),
                                                torch.from_numpy(words[1].astype(np.int64)))
    return words.astype(np.uint32), u.numpy()


def test_simd_uniforms_are_the_references():
    words, u = _all_unit_doubles()
    assert np.array_equal(noise_numba_simd.unit(words[0], words[1]), u)
    assert u.min() == 2.0**-54 and u.max() == 1.0


def test_simd_log_is_within_one_ulp():
    _, u = _all_unit_doubles()
    u = np.concatenate([u, np.nextafter(np.sqrt(0.5), [0.0, 1.0]), [np.sqrt(0.5), 0.5, 0.25]])
    got, ref = noise_numba_simd.log(u), np.log(u)
    nonzero = ref != 0
    assert np.all(np.abs(got - ref)[nonzero] <= np.spacing(np.abs(ref))[nonzero])
    assert np.all(got[~nonzero] == 0.0)  # u = 1


def test_simd_minus_two_log_is_exactly_minus_two_times_log():
    # Box-Muller's -2 log(u) folds the -2 into log's inputs (powers of 2: exact), so it must
    # equal -2 * log bit for bit
    _, u = _all_unit_doubles()
    u = np.concatenate([u, 1.0 - np.random.default_rng(1).random(10_000) * 1e-9,
                        np.nextafter(np.sqrt(0.5), [0.0, 1.0])])
    assert np.array_equal(noise_numba_simd.minus_two_log(u), -2.0 * noise_numba_simd.log(u))


def test_simd_cos_sin_are_within_one_ulp_or_2e_16():
    _, u = _all_unit_doubles()
    th = np.concatenate([2 * np.pi * u, [0.0, np.pi / 4, np.pi / 2, np.pi, 1.5 * np.pi,
                                         2 * np.pi]])
    c, s = noise_numba_simd.cos_sin(th)
    for got, ref in ((c, np.cos(th)), (s, np.sin(th))):
        assert np.all(np.abs(got - ref) <= np.maximum(np.spacing(np.abs(ref)), 2e-16))


def test_simd_constants_split_ln2_and_pi_over_2_exactly():
    from decimal import Decimal, getcontext
    from fractions import Fraction
    getcontext().prec = 60
    ln2 = Fraction(Decimal(2).ln())
    pi_2 = Fraction(Decimal("1.57079632679489661923132169163975144209858469968755291048747"))
    s = noise_numba_simd
    assert abs(Fraction(s._LN2_HI) + Fraction(s._LN2_LO) - ln2) < Fraction(2) ** -100
    assert abs(Fraction(s._P1) + Fraction(s._P2) + Fraction(s._P3) - pi_2) < Fraction(2) ** -120
    for high, bits in ((s._LN2_HI, 42), (s._P1, 33), (s._P2, 33)):  # k * high exact
        mantissa = Fraction(high) * 2 ** (bits - 1 - math.frexp(high)[1] + 1)
        assert mantissa.denominator == 1, high


def _rows_with(kernel, x, sigma, ids, seed, ri, rs, rj, dest=None):
    out = torch.full((len(ri), x.shape[1]), float("nan"), dtype=x.dtype)
    kernel(out, x, sigma, ids, seed, ri, rs, rj, dest)
    return out


@pytest.mark.parametrize("dim", [1, 3, 5, 784, 3073])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simd_kernel_matches_reference_and_numba(dim, dtype):
    # float32: bit for bit (but rare near-ties); float64: the last bits of log/sin/cos
    g = torch.Generator().manual_seed(dim)
    B, R = 3, 41
    x = torch.rand(B, dim, generator=g, dtype=dtype)
    sigma = torch.tensor([0.12, 0.5, 1.0], dtype=dtype)
    ids = torch.tensor([0, 2**32 - 1, 77])
    ri, rs = torch.randint(0, B, (R,), generator=g), torch.randint(0, 6, (R,), generator=g)
    rj = torch.randint(0, 2**32, (R,), generator=g)
    args = (x, sigma, ids, 0xFEEDFACE12345678, ri, rs, rj)
    got = _rows_with(noise_numba_simd.noisy_rows_into, *args)
    ref = philox_torch.noisy_rows(x, sigma, ids, 0xFEEDFACE12345678, ri, rs, rj).reshape(R, -1)
    assert_same_noise(got, ref)
    assert_same_noise(got, _rows_with(noisy_rows_into, *args))
    perm = torch.randperm(dim, generator=g)
    permuted = _rows_with(noise_numba_simd.noisy_rows_into, *args, dest=perm)
    assert torch.equal(permuted[:, perm], got)


def test_simd_kernel_thread_count_invariant():
    x = torch.rand(3, 1, 28, 28).reshape(3, -1)
    args = (x, torch.tensor([0.25, 0.5, 1.0]), torch.arange(3), 11, torch.arange(300) % 3,
            torch.zeros(300, dtype=torch.int64), torch.arange(300))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _rows_with(noise_numba_simd.noisy_rows_into, *args)
        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS))
        many = _rows_with(noise_numba_simd.noisy_rows_into, *args)
    finally:
        numba.set_num_threads(before)
    assert torch.equal(one, many)


@numba.njit
def _marked():
    noise_numba_simd._allow_512_bit_vectors()
    return 0


def test_simd_kernel_asks_llvm_for_512_bit_vectors():
    _marked()
    ir = next(iter(_marked.inspect_llvm().values()))
    assert '"prefer-vector-width"="512"' in ir


@numba.njit
def _simd_rows_at_default_width(x, sigma, ids, k0, k1, row_input, row_stream, row_j, out):
    """The simd kernel's row loop without the 512-bit attribute (LLVM's default width)."""
    n_blocks = (x.shape[1] + 1) // 2
    bits = np.empty((4, n_blocks), np.uint32)
    z = np.empty((2, n_blocks), np.float64)
    dest = np.zeros(1, np.int64)
    for r in range(out.shape[0]):
        i = row_input[r]
        c1, c2, c3 = np.uint32(row_j[r]), np.uint32(ids[i]), np.uint32(row_stream[r])
        noise_numba_simd._philox_row(bits, n_blocks, c1, c2, c3, k0, k1)
        noise_numba_simd._box_muller_row_fine(bits, n_blocks, z, c1, c2, c3, k0, k1)  # float64
        noise_numba_simd._add_scaled_pairs(out, r, x, i, sigma[i], z, x.shape[1], dest, True)


@pytest.mark.parametrize("dim", [1, 7, 33, 784, 3072])
def test_simd_noise_does_not_depend_on_vector_width(dim):
    # element-wise IEEE ops and FMAs: 512-bit and default-width code give the same bits
    g = torch.Generator().manual_seed(dim)
    x = torch.rand(4, dim, generator=g, dtype=torch.float64)  # float64: every bit of z shows
    sigma = torch.tensor([0.1, 0.25, 0.5, 1.0], dtype=torch.float64)
    ids = torch.tensor([0, 5, 2**32 - 1, 9])
    ri, rs = torch.randint(0, 4, (97,), generator=g), torch.randint(0, 6, (97,), generator=g)
    rj = torch.randint(0, 2**32, (97,), generator=g)
    seed = 0xFEEDFACE12345678
    got = _rows_with(noise_numba_simd.noisy_rows_into, x, sigma, ids, seed, ri, rs, rj)
    want = torch.empty_like(got)
    k0, k1 = philox_torch.split_seed(seed)
    _simd_rows_at_default_width(x.numpy(), sigma.numpy(), ids.numpy(), np.uint32(k0),
                                np.uint32(k1), ri.numpy(), rs.numpy(), rj.numpy(), want.numpy())
    assert torch.equal(got, want)


def test_simd_backend_in_certify():
    import dualrs_fast as drs
    from analytic import LinearBinary
    g = torch.Generator().manual_seed(7)
    model = LinearBinary(torch.randn(3 * 6 * 6, generator=g), 0.1)
    x = torch.rand(4, 3, 6, 6, generator=g)
    a = drs.certify(model, x, sigma=0.5, n0=10, n=400, seed=0, noise_backend="numba")
    b = drs.certify(model, x, sigma=0.5, n0=10, n=400, seed=0, noise_backend="numba-simd",
                    batch_size=91)
    assert torch.equal(a.count, b.count)  # no sample of this run sits within rounding of a tie
