"""The Triton kernels (noise, votes) against the PyTorch references, run in Triton's CPU
interpreter (TRITON_INTERPRET=1, ~3M normals/s: sizes stay small).

TRITON_INTERPRET must be set before a kernel module applies ``@triton.jit``; the fixture
below sets it only while this module runs and (re)imports the kernel modules under it, so
the rest of the suite is unaffected and the order in which modules are imported is not.
"""
import importlib
import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from dualrs_fast.kernels import philox_torch, votes_torch  # noqa: E402
from dualrs_fast.kernels.noise_numba import noisy_rows_into as numba_noisy_rows_into  # noqa: E402
from test_noise_kernels import assert_same_noise  # noqa: E402

K = {}


def _interpreted(name, kernel):
    mod = importlib.import_module(f"dualrs_fast.kernels.{name}")
    if isinstance(getattr(mod, kernel), triton.runtime.jit.JITFunction):
        mod = importlib.reload(mod)  # imported earlier without the interpreter: decorate again
    return mod


@pytest.fixture(autouse=True, scope="module")
def interpreted_kernels():
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        K["noise_triton"] = _interpreted("noise_triton", "_noisy_rows_kernel")
        # after noise_triton: the pair kernel calls its (now interpreted) helpers
        K["noise_pair_triton"] = _interpreted("noise_pair_triton", "_noisy_row_pairs_kernel")
        K["votes_triton"] = _interpreted("votes_triton", "_votes_kernel")
        assert K["noise_triton"].INTERPRETED
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


@pytest.mark.parametrize("ctr,key,expected", [
    # Known-answer vectors of Random123's philox4x32-10 (kat_vectors).
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_triton_philox_known_answers(ctr, key, expected):
    out = K["noise_triton"].philox_words(torch.tensor([ctr]), *key)
    assert tuple(out[0].tolist()) == expected


def test_triton_philox_matches_reference_on_random_counters():
    g = torch.Generator().manual_seed(4)
    c = torch.randint(0, 2**32, (1000, 4), generator=g)
    for k0, k1 in ((0, 0), (2**32 - 1, 7), (0x12345678, 2**31)):
        got = K["noise_triton"].philox_words(c, k0, k1)
        ref = torch.stack(philox_torch.philox4x32(*c.unbind(1), k0, k1), 1)
        assert torch.equal(got, ref)


def _rows(g, batch, rows):
    ri = torch.randint(0, batch, (rows,), generator=g)
    rs = torch.randint(0, 6, (rows,), generator=g)
    rj = torch.randint(0, 2**32, (rows,), generator=g)
    return ri, rs, rj


@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (785,), (3, 7, 9), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_noise_matches_reference_and_numba(shape, dtype):
    g = torch.Generator().manual_seed(0)
    B, R = 4, 9
    x = torch.rand((B,) + shape, generator=g, dtype=dtype)
    flat = x.reshape(B, -1).contiguous()
    sigma = torch.tensor([0.12, 0.25, 0.5, 1.0], dtype=dtype)
    ids = torch.tensor([0, 3, 2**32 - 1, 12345])
    ri, rs, rj = _rows(g, B, R)
    seed = 0xDEADBEEFCAFEF00D
    ref = philox_torch.noisy_rows(x, sigma, ids, seed, ri, rs, rj).reshape(R, -1)
    got = torch.full_like(ref, float("nan"))
    K["noise_triton"].noisy_rows_into(got, flat, sigma, ids, seed, ri, rs, rj)
    assert_same_noise(got, ref)   # float32: bit for bit but rare near-ties
    cpu = torch.empty_like(ref)
    numba_noisy_rows_into(cpu, flat, sigma, ids, seed, ri, rs, rj)
    assert_same_noise(got, cpu)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 3), (4, 1, 9)])
def test_triton_channels_last_rows_hold_the_same_noise(shape):
    g = torch.Generator().manual_seed(1)
    B, R = 2, 5
    flat = torch.rand(B, int(np.prod(shape)), generator=g)
    sigma, ids = torch.tensor([0.3, 0.7]), torch.tensor([5, 6])
    ri, rs, rj = _rows(g, B, R)
    nchw = torch.empty(R, flat.shape[1])
    nhwc = torch.empty(R, flat.shape[1])
    K["noise_triton"].noisy_rows_into(nchw, flat, sigma, ids, 3, ri, rs, rj)
    K["noise_triton"].noisy_rows_into(nhwc, flat, sigma, ids, 3, ri, rs, rj,
                                      channels_last_shape=shape)
    c, h, w = shape
    assert torch.equal(nhwc.view(R, h, w, c).permute(0, 3, 1, 2).reshape(R, -1), nchw)


def test_triton_noise_fills_a_row_range_of_a_larger_buffer():
    flat = torch.rand(2, 10)
    buf = torch.full((6, 10), -7.0)
    ri, rs, rj = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 1]), torch.tensor([0, 1, 2])
    K["noise_triton"].noisy_rows_into(buf[:3], flat, torch.tensor([0.5, 0.5]), torch.arange(2),
                                      0, ri, rs, rj)
    assert torch.all(buf[3:] == -7.0) and torch.all(buf[:3] != -7.0)


@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (785,), (3, 7, 9), (1, 28, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_pair_equals_two_single_kernels_and_numba(shape, dtype):
    from dualrs_fast.kernels.noise_pair_numba import noisy_row_pairs_into as numba_pairs
    g = torch.Generator().manual_seed(5)
    B, R = 4, 9
    flat = torch.rand((B,) + shape, generator=g, dtype=dtype).reshape(B, -1).contiguous()
    sigma_a = torch.full((B,), 1.0, dtype=torch.float64)
    sigma_b = torch.tensor([0.12, 0.25, 0.5, 1.0], dtype=torch.float64)
    ids = torch.tensor([0, 3, 2**32 - 1, 12345])
    ri, rs, rj = _rows(g, B, R)
    seed = 0xDEADBEEFCAFEF00D
    outs = [torch.full((R, flat.shape[1]), float("nan"), dtype=dtype) for _ in range(6)]
    K["noise_pair_triton"].noisy_row_pairs_into(outs[0], outs[1], flat, sigma_a, sigma_b, ids,
                                                seed, ri, rs, rj)
    for out, sigma in zip(outs[2:4], (sigma_a, sigma_b)):
        K["noise_triton"].noisy_rows_into(out, flat, sigma, ids, seed, ri, rs, rj)
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    numba_pairs(outs[4], outs[5], flat, sigma_a, sigma_b, ids, seed, ri, rs, rj, backend="numba")
    assert_same_noise(outs[0], outs[4])
    assert_same_noise(outs[1], outs[5])


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 1, 9)])
def test_triton_pair_writes_channels_last_rows(shape):
    g = torch.Generator().manual_seed(6)
    B, R = 2, 5
    flat = torch.rand(B, int(np.prod(shape)), generator=g)
    sigma_a, sigma_b, ids = torch.tensor([1.0, 1.0]), torch.tensor([0.3, 0.7]), torch.tensor([5, 6])
    ri, rs, rj = _rows(g, B, R)
    buf = torch.full((4, R + 2, flat.shape[1]), -7.0)   # row ranges of larger buffers
    K["noise_pair_triton"].noisy_row_pairs_into(buf[0, :R], buf[1, :R], flat, sigma_a, sigma_b,
                                                ids, 3, ri, rs, rj, channels_last_shape=shape)
    for out, sigma in zip(buf[2:], (sigma_a, sigma_b)):
        K["noise_triton"].noisy_rows_into(out[:R], flat, sigma, ids, 3, ri, rs, rj,
                                          channels_last_shape=shape)
    assert torch.equal(buf[0], buf[2]) and torch.equal(buf[1], buf[3])
    assert torch.all(buf[:, R:] == -7.0)


def _tied_logits(g, m, k, dtype):
    return torch.randint(0, 3, (m, k), generator=g).to(dtype)  # many ties


@pytest.mark.parametrize("m,k,segments,dtype", [
    (1, 2, 1, torch.float32), (37, 3, 2, torch.float64), (70, 17, 5, torch.float32),
    (300, 10, 7, torch.float32), (50, 10, 3, torch.float16), (2, 1000, 3, torch.float32)])
def test_triton_votes_match_reference(m, k, segments, dtype):
    g = torch.Generator().manual_seed(m * k)
    logits = _tied_logits(g, m, k, dtype)
    seg = torch.randint(0, segments, (m,), generator=g)
    counts = {}
    for name, fn in (("ref", votes_torch.votes_into), ("triton", K["votes_triton"].votes_into)):
        c = torch.zeros(segments, k, dtype=torch.int64)
        bad = torch.zeros(1, dtype=torch.int64)
        fn(c, bad, logits, seg)
        counts[name] = (c, int(bad))
    assert torch.equal(counts["ref"][0], counts["triton"][0])
    assert counts["ref"][1] == counts["triton"][1] == 0
    assert int(counts["ref"][0].sum()) == m


def test_triton_votes_non_finite_rows_and_strided_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(60, 5, generator=g)
    logits[3, 1] = float("nan")
    logits[4, [1, 3]] = float("nan")
    logits[7, 2] = float("inf")
    logits[9, :] = -float("inf")
    logits[11, 0] = float("nan")
    seg = torch.randint(0, 2, (60,), generator=g)
    for lg in (logits, logits.t().contiguous().t()):  # row- and column-major
        ref_c, ref_b = torch.zeros(2, 5, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
        votes_torch.votes_into(ref_c, ref_b, lg, seg)
        c, b = torch.zeros(2, 5, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
        K["votes_triton"].votes_into(c, b, lg, seg)
        assert torch.equal(c, ref_c)
        assert int(b) == int(ref_b) == 5


def test_engine_with_triton_backends_matches_cpu_backends():
    from dualrs_fast.noise import Stream
    from dualrs_fast.sampling import Draw, count_votes
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 5, 4)).eval()
    x = torch.rand(3, 3, 6, 5, generator=g)
    sigma = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    kw = dict(seed=11, ids=torch.tensor([4, 0, 9]), batch_size=37)
    draws = [Draw(Stream.SELECT, 7), Draw(Stream.ESTIMATE, 50)]
    cpu = count_votes(model, x, sigma, draws, **kw)
    tri = count_votes(model, x, sigma, draws, noise_backend="triton", votes_backend="triton", **kw)
    assert torch.equal(cpu, tri)
    assert int(cpu.sum()) == 3 * 57


# ---- float64 inputs: float64 noise (issue 10, item 1)

@pytest.mark.parametrize("shape", [(1,), (5,), (3, 7, 9)])
def test_triton_float64_noise_matches_reference_and_numba(shape):
    g = torch.Generator().manual_seed(6)
    B, R = 3, 9
    x = torch.rand((B,) + shape, generator=g, dtype=torch.float64)
    flat = x.reshape(B, -1).contiguous()
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    ids = torch.tensor([0, 2**32 - 1, 12345])
    ri, rs, rj = _rows(g, B, R)
    seed = 0xDEADBEEFCAFEF00D
    ref = philox_torch.noisy_rows(x, sigma, ids, seed, ri, rs, rj).reshape(R, -1)
    got = torch.full_like(ref, float("nan"))
    K["noise_triton"].noisy_rows_into(got, flat, sigma, ids, seed, ri, rs, rj)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)   # float32 noise: off by 1e-8
    cpu = torch.empty_like(ref)
    numba_noisy_rows_into(cpu, flat, sigma, ids, seed, ri, rs, rj)
    torch.testing.assert_close(got, cpu, rtol=0, atol=1e-13)
    if len(shape) == 3:
        nhwc = torch.empty_like(ref)
        K["noise_triton"].noisy_rows_into(nhwc, flat, sigma, ids, seed, ri, rs, rj,
                                          channels_last_shape=shape)
        c, h, w = shape
        assert torch.equal(nhwc.view(R, h, w, c).permute(0, 3, 1, 2).reshape(R, -1), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_refined_blocks_match_the_reference(dtype):
    # float64 inputs' radius uniform redrawn in its tails (issue 20): blocks refined on both
    # sides, single and pair kernels; float32 rows stay the 53-bit noise's, bit for bit
    from test_float64_fine_noise import big_case, refined_blocks, unrefined_radius
    x, sigma, ids, ri, rs, rj = big_case(dtype, rows=48, dim=1024)
    lower, upper = refined_blocks(ids, ri, rs, rj, 1024, seed=0xDEADBEEFCAFEF00D)
    assert int(lower.sum()) > 4 and int(upper.sum()) > 4   # 13 and 8
    seed = 0xDEADBEEFCAFEF00D
    ref = philox_torch.noisy_rows(x, sigma, ids, seed, ri, rs, rj)
    got, a, b = (torch.full_like(ref, float("nan")) for _ in range(3))
    K["noise_triton"].noisy_rows_into(got, x, sigma, ids, seed, ri, rs, rj)
    K["noise_pair_triton"].noisy_row_pairs_into(a, b, x, sigma, sigma * 2, ids, seed, ri, rs, rj)
    assert_same_noise(got, ref)
    assert torch.equal(a, got)
    if dtype == torch.float64:   # and the refinement moved those blocks' radii
        z = (ref - x[ri]) / sigma[ri].unsqueeze(1)
        moved = (torch.sqrt(z[:, 0::2] ** 2 + z[:, 1::2] ** 2)
                 - unrefined_radius(ids, ri, rs, rj, 1024, seed=seed)).abs()
        assert float((moved[lower | upper] > 1e-6).float().mean()) > 0.95


def test_triton_float32_lattice_model_gets_no_certificate_for_float64_inputs():
    import dualrs_fast as drs
    from test_float64_noise import SIGMA, Float32LatticeDetector, _image_like_float64
    x = _image_like_float64()
    model = Float32LatticeDetector(x, SIGMA)
    r = drs.certify(model, x[None], sigma=SIGMA, n0=10, n=200, alpha=0.001, seed=0,
                    noise_backend="triton")
    assert r.prediction.tolist() == [0] and int(r.count[0]) == 200   # float32 noise: class 1


def test_triton_float32_lattice_model_through_dual_smoothing(monkeypatch):
    import dualrs_fast as drs
    from dualrs_fast import sampling
    from test_float64_noise import SIGMA, Float32LatticeDetector, _image_like_float64, _Level0
    monkeypatch.setattr(sampling, "resolve_backend", lambda name, device: "triton")
    x = _image_like_float64()
    experts = {SIGMA: Float32LatticeDetector(x, SIGMA), 0.5: Float32LatticeDetector(x, 0.5)}
    dual = drs.DualSmoothing(_Level0(), experts, sigmas=(SIGMA, 0.5), estimator_sigma=SIGMA)
    r = dual.certify(x[None], n0=10, n=200, alpha=0.001, seed=0, estimator_rounds=1)
    assert r.level.tolist() == [0] and r.prediction.tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_votes_count_half_precision_ties_like_the_reference(dtype):
    g = torch.Generator().manual_seed(8)
    logits = _tied_logits(g, 90, 6, dtype)
    seg = torch.randint(0, 4, (90,), generator=g)
    want, got = (torch.zeros(4, 6, dtype=torch.int64) for _ in range(2))
    votes_torch.votes_into(want, torch.zeros(1, dtype=torch.int64), logits, seg)
    K["votes_triton"].votes_into(got, torch.zeros(1, dtype=torch.int64), logits, seg)
    assert torch.equal(got, want)


# ---- float32 inputs: float64 noise rounded once, no float32 Box-Muller lattice (issue 20)

def test_triton_float32_noise_passes_the_distinguishers():
    from noise_distinguishers import angle_lattice_score, background_input, radius_lattice_score
    x = background_input(784, 600)
    rows, sigma = 64, 0.25
    out = torch.empty(rows, 784)
    K["noise_triton"].noisy_rows_into(out, x, torch.tensor([sigma], dtype=torch.float64),
                                      torch.tensor([0]), 5, torch.zeros(rows, dtype=torch.int64),
                                      torch.ones(rows, dtype=torch.int64), torch.arange(rows))
    assert angle_lattice_score(out, 600, per_row=True).abs().max() < 5   # old noise: ~ -16
    assert abs(angle_lattice_score(out, 600)) < 5 and abs(radius_lattice_score(out, 600, sigma)) < 5


def test_triton_noise_recogniser_gets_no_false_certificate():
    import dualrs_fast as drs
    from noise_distinguishers import background_input
    from test_noise_distinguishers import NoiseRecogniser
    x = background_input(784, 600)
    r = drs.certify(NoiseRecogniser(), x, sigma=0.25, n0=10, n=50, alpha=0.001,
                    noise_backend="triton")
    assert r.prediction.tolist() == [0] and int(r.count[0]) == 50   # old noise: class 1
