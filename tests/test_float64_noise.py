"""float64 inputs get float64 noise on every CPU backend (Triton: test_kernels_triton.py).

The attack (issue 10, item 1): with float32 noise under a float64 input, (x_noisy - x) / sigma
is exactly a float32 value, so a model that votes class 1 exactly then got a certificate for
class 1, which real Gaussian noise would almost never give it.
"""
import numpy as np
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast import sampling
from dualrs_fast.kernels import noise_numba, noise_numba_simd, philox_torch

CPU_BACKENDS = ["numba", "numba-simd", "torch"]
SIGMA = 0.25
DIM = 8


class Float32LatticeDetector(torch.nn.Module):
    """Votes class 1 exactly when (x_noisy - x) / sigma is a float32 value in every
    coordinate: it knows x and sigma, as an adversary may."""

    def __init__(self, x: torch.Tensor, sigma: float):
        super().__init__()
        self.register_buffer("x", x.reshape(1, -1).clone())
        self.sigma = sigma

    def forward(self, x_noisy):
        z = (x_noisy.reshape(len(x_noisy), -1) - self.x) / self.sigma
        on = (z.to(torch.float32).to(z.dtype) == z).all(1)
        return torch.stack([(~on).to(z.dtype), on.to(z.dtype)], 1)


def _image_like_float64(seed=0):
    """A float64 input with float32 values, as images loaded in float32 and converted: then
    x + sigma * (float32 noise) is exact and float32 noise can be read back from x_noisy."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(DIM, generator=g).to(torch.float64)


def _noise_rows(backend, x, seed=7, rows=2000):
    """(x_noisy - x) / sigma of ``rows`` samples of x (1, D), from one backend's kernel."""
    flat = x.reshape(1, -1).contiguous()
    sigma = torch.tensor([SIGMA], dtype=x.dtype)
    ri = torch.zeros(rows, dtype=torch.int64)
    rs = torch.ones(rows, dtype=torch.int64)
    rj = torch.arange(rows)
    ids = torch.tensor([3])
    if backend == "torch":
        out = philox_torch.noisy_rows(flat, sigma, ids, seed, ri, rs, rj)
    else:
        out = torch.empty(rows, flat.shape[1], dtype=x.dtype)
        kernel = noise_numba if backend == "numba" else noise_numba_simd
        kernel.noisy_rows_into(out, flat, sigma, ids, seed, ri, rs, rj, None)
    return (out - flat) / SIGMA


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_noise_is_off_the_float32_lattice(backend):
    x = _image_like_float64()
    z = _noise_rows(backend, x)
    on_lattice = (z.to(torch.float32).to(torch.float64) == z).double().mean()
    assert float(on_lattice) < 1e-3      # float32 noise: 1.0
    # still standard normal
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 5 / np.sqrt(flat.size) and abs(flat.std() - 1) < 0.05


@pytest.mark.parametrize("backend", ["numba", "numba-simd"])
def test_float64_kernels_match_the_reference(backend):
    x = _image_like_float64(1).reshape(1, -1).repeat(3, 1) + torch.arange(3.0)[:, None] / 7
    x = torch.cat([x, x[:, :3]], 1)       # an odd width: the last Philox block is half used
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    ids = torch.tensor([0, 2**32 - 1, 5])
    g = torch.Generator().manual_seed(2)
    ri, rs = torch.randint(0, 3, (41,), generator=g), torch.randint(0, 6, (41,), generator=g)
    rj = torch.randint(0, 2**32, (41,), generator=g)
    ref = philox_torch.noisy_rows(x, sigma, ids, 0xFEEDFACE12345678, ri, rs, rj)
    out = torch.full_like(ref, float("nan"))
    kernel = noise_numba if backend == "numba" else noise_numba_simd
    kernel.noisy_rows_into(out, x, sigma, ids, 0xFEEDFACE12345678, ri, rs, rj, None)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)
    perm = torch.randperm(x.shape[1], generator=g)
    permuted = torch.empty_like(out)
    kernel.noisy_rows_into(permuted, x, sigma, ids, 0xFEEDFACE12345678, ri, rs, rj, perm)
    assert torch.equal(permuted[:, perm], out)


def test_noise_specification_known_values():
    # float64 noise is what it was before float32 inputs got it too (issue 20): pinned values
    seed, ids, streams, js = 0x0123456789ABCDEF, [0, 7], [1, 3], [5, 2**32 - 1]
    f64 = philox_torch.gaussian_noise(seed, ids, streams, js, 3)
    assert f64.dtype == torch.float64
    assert [float.hex(v) for v in f64[0].tolist()] == [
        "0x1.7daa86d5d2703p-1", "-0x1.49c72440e183fp-4", "0x1.6b93f6f10a51ep-1"]
    assert float.hex(float(f64[1, 1])) == "-0x1.b7397fd2da5c7p-9"


def test_float32_rows_are_the_float64_rows_rounded_once():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 9, generator=g)
    sigma = torch.tensor([0.1, 0.7], dtype=torch.float64)   # 0.1: not a float32 value
    args = (torch.tensor([4, 2**32 - 1]), 99, torch.tensor([0, 1, 1]), torch.tensor([0, 2, 5]),
            torch.tensor([3, 0, 2**32 - 1]))
    f32 = philox_torch.noisy_rows(x, sigma, *args)
    # the float64 rows of the 53-bit noise (float64 inputs' own rows take a finer radius,
    # tests/test_float64_fine_noise.py)
    ids, seed, row_input, streams, js = args
    z = philox_torch.gaussian_noise(seed, ids[row_input], streams, js, 9)
    f64 = x.double()[row_input] + sigma[row_input].unsqueeze(1) * z
    assert f32.dtype == torch.float32 and torch.equal(f32, f64.float())
    assert not torch.equal(f32, philox_torch.noisy_rows(x, sigma.float(), *args))  # sigma in float64


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_lattice_model_gets_no_certificate_for_float64_inputs(backend):
    x = _image_like_float64()
    model = Float32LatticeDetector(x, SIGMA)
    r = drs.certify(model, x[None], sigma=SIGMA, n0=20, n=500, alpha=0.001, seed=0,
                    noise_backend=backend)
    # float32 noise: all 520 votes for class 1, radius ~0.6. float64 noise: class 0.
    assert r.prediction.tolist() == [0] and int(r.count[0]) == 500
    p = drs.predict(model, x[None], sigma=SIGMA, n=300, alpha=0.001, seed=0,
                    noise_backend=backend)
    assert p.tolist() == [0]


class _Level0(torch.nn.Module):
    """An estimator that always picks the first level."""

    def forward(self, x):
        out = torch.zeros(len(x), 2, dtype=x.dtype)
        out[:, 0] = 1.0
        return out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_lattice_model_gets_no_certificate_through_dual_smoothing(backend, monkeypatch):
    monkeypatch.setattr(sampling, "resolve_backend", lambda name, device: backend)
    x = _image_like_float64()
    experts = {SIGMA: Float32LatticeDetector(x, SIGMA), 0.5: Float32LatticeDetector(x, 0.5)}
    dual = drs.DualSmoothing(_Level0(), experts, sigmas=(SIGMA, 0.5), estimator_sigma=SIGMA)
    r = dual.certify(x[None], n0=20, n=500, alpha=0.001, seed=0)
    assert r.level.tolist() == [0]
    assert r.prediction.tolist() == [0]   # float32 noise: class 1
    assert dual.predict(x[None], n=300, alpha=0.001, seed=0).tolist() == [0]


@pytest.mark.parametrize("x_dtype,model_dtype", [(torch.float64, torch.float32),
                                                 (torch.float32, torch.float64)])
def test_input_and_model_dtypes_must_match(x_dtype, model_dtype):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(DIM, 3)).to(model_dtype)
    x = torch.rand(2, DIM, dtype=x_dtype)
    with pytest.raises(TypeError, match="model's parameters are"):
        drs.certify(model, x, sigma=SIGMA, n0=5, n=20, seed=0)
    with pytest.raises(TypeError, match="model's parameters are"):
        drs.predict(model, x, sigma=SIGMA, n=20, seed=0)
    dual = drs.DualSmoothing(model, {SIGMA: model, 0.5: model, 1.0: model})
    with pytest.raises(TypeError, match="model's parameters are"):
        dual.certify(x, n0=5, n=20, seed=0)
    r = drs.certify(model, x.to(model_dtype), sigma=SIGMA, n0=5, n=20, seed=0)  # same dtype: fine
    assert r.n == 20


def test_half_precision_model_is_refused_for_float32_inputs():
    # a float16 model would round the noisy input to a float16 lattice
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(DIM, 3)).half()
    with pytest.raises(TypeError, match="float16"):
        drs.certify(model, torch.rand(1, DIM), sigma=SIGMA, n0=5, n=20, seed=0)
