"""The Triton kernels compiled for a real GPU (no interpreter), against the PyTorch
references on the same device: run by ``bench/gpu.sh``; every test skips without CUDA.
(tests/test_kernels_triton.py checks the same kernels in Triton's CPU interpreter.)"""
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast.models import load_default_classifier
from dualrs_fast.noise import Stream, fill_noisy_row_pairs, fill_noisy_rows
from dualrs_fast.sampling import add_votes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _rows(m, batch, device):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, batch, (m,), generator=g).to(device),
            torch.randint(0, 6, (m,), generator=g).to(device),
            torch.randint(0, 2**31, (m,), generator=g).to(device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_noise_equals_the_torch_reference_on_cuda(dtype):
    batch, dim, m = 5, 784, 4096
    x = torch.rand(batch, dim, dtype=dtype, device=CUDA)
    sigma = torch.linspace(0.1, 1.0, batch, dtype=dtype, device=CUDA)
    ids = torch.arange(batch, device=CUDA) * 7
    row_input, row_stream, row_j = _rows(m, batch, CUDA)
    out = {}
    for backend in ("triton", "torch"):
        out[backend] = torch.empty(m, dim, dtype=dtype, device=CUDA)
        fill_noisy_rows(out[backend], x, sigma, ids, 3, row_input, row_stream, row_j, None,
                        backend)
    tol = 1e-5 if dtype == torch.float32 else 1e-12   # log / sin / cos rounding only
    torch.testing.assert_close(out["triton"], out["torch"], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_noise_pair_equals_two_single_kernels_on_cuda(dtype):
    # the compiled pair kernel (one z, two sigmas) against the single-output one, bit for bit
    batch, dim, m = 5, 784, 4096
    x = torch.rand(batch, dim, dtype=dtype, device=CUDA)
    sigma_a = torch.full((batch,), 1.0, dtype=torch.float64, device=CUDA)
    sigma_b = torch.linspace(0.1, 1.0, batch, dtype=torch.float64, device=CUDA)
    ids = torch.arange(batch, device=CUDA) * 7
    row_input, row_stream, row_j = _rows(m, batch, CUDA)
    outs = [torch.empty(m, dim, dtype=dtype, device=CUDA) for _ in range(4)]
    fill_noisy_row_pairs(outs[0], outs[1], x, sigma_a, sigma_b, ids, 3, row_input, row_stream,
                         row_j, None, "triton")
    for out, sigma in zip(outs[2:], (sigma_a, sigma_b)):
        fill_noisy_rows(out, x, sigma, ids, 3, row_input, row_stream, row_j, None, "triton")
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])


def test_triton_votes_equal_the_torch_reference_on_cuda():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10_000, 10, generator=g).to(CUDA)
    logits[::97, 3] = logits[::97, 5]                        # ties: first maximum wins
    seg = torch.randint(0, 16, (10_000,), generator=g).to(CUDA)
    counts = {}
    for backend in ("triton", "torch"):
        counts[backend] = torch.zeros(16, 10, dtype=torch.int64, device=CUDA)
        bad = torch.zeros(1, dtype=torch.int64, device=CUDA)
        add_votes(counts[backend], bad, logits, seg, backend)
        assert int(bad) == 0
    assert torch.equal(counts["triton"], counts["torch"])


def test_certify_on_cuda_matches_the_cpu():
    # Same noise (counter-based) on both devices: counts agree up to float rounding near a
    # decision boundary (a handful of votes), predictions agree.
    model = load_default_classifier(0.5)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    kw = dict(sigma=0.5, n0=100, n=2000, alpha=0.001, seed=0)
    cpu = drs.certify(model, x, **kw)
    gpu = drs.certify(model.to(CUDA), x.to(CUDA), **kw)
    assert torch.equal(cpu.prediction, gpu.prediction.cpu())
    assert (cpu.count - gpu.count.cpu()).abs().max() <= 20
