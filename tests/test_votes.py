"""Vote counting: the fused numba kernel gives exactly the counts of the PyTorch reference
(argmax + per-segment histogram + non-finite check), and the engine picks and honours the
votes backend. (The Triton kernel is checked in test_kernels_triton.py.)"""
import pytest
import torch

from dualrs_fast.kernels import votes_numba, votes_torch
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, add_votes, count_votes, resolve_votes_backend

BACKENDS = {"torch": votes_torch.votes_into, "numba": votes_numba.votes_into}


def _run(fn, logits, seg, segments):
    counts = torch.zeros(segments, logits.shape[1], dtype=torch.int64)
    bad = torch.zeros(1, dtype=torch.int64)
    fn(counts, bad, logits, seg)
    return counts, int(bad)


@pytest.mark.parametrize("m,k,segments", [(1, 2, 1), (2, 1, 1), (37, 3, 2), (1000, 10, 7),
                                          (5, 1000, 3), (129, 17, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_votes_equal_reference(m, k, segments, dtype):
    g = torch.Generator().manual_seed(m + k)
    for logits in (torch.randint(0, 3, (m, k), generator=g).to(dtype),  # many ties
                   torch.randn(m, k, generator=g, dtype=dtype)):
        seg = torch.randint(0, segments, (m,), generator=g)
        ref = _run(votes_torch.votes_into, logits, seg, segments)
        got = _run(votes_numba.votes_into, logits, seg, segments)
        assert torch.equal(got[0], ref[0]) and got[1] == ref[1] == 0
        assert int(ref[0].sum()) == m


def test_ties_go_to_the_first_maximal_class():
    logits = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [-1.0, -1.0, -5.0]])
    for fn in BACKENDS.values():
        counts, _ = _run(fn, logits, torch.zeros(3, dtype=torch.int64), 1)
        assert counts.tolist() == [[2, 1, 0]]


def test_non_finite_logits_are_counted_and_argmax_matches_torch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 5, generator=g)
    logits[3, 1] = float("nan")
    logits[4, [1, 3]] = float("nan")
    logits[5, [0, 2]] = torch.tensor([float("inf"), float("nan")])
    logits[7, 2] = float("inf")
    logits[9, :] = -float("inf")
    seg = torch.randint(0, 3, (40,), generator=g)
    ref = _run(votes_torch.votes_into, logits, seg, 3)
    got = _run(votes_numba.votes_into, logits, seg, 3)
    assert torch.equal(got[0], ref[0])
    assert got[1] == ref[1] == 5


def test_strided_logits_and_accumulation():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(10, 30, generator=g).t()  # (30, 10), column-major
    seg = torch.randint(0, 4, (30,), generator=g)
    results = []
    for fn in BACKENDS.values():
        counts = torch.zeros(4, 10, dtype=torch.int64)
        bad = torch.zeros(1, dtype=torch.int64)
        fn(counts, bad, logits, seg)
        fn(counts, bad, logits[:7], seg[:7])  # counts accumulate across calls
        results.append(counts)
    assert torch.equal(results[0], results[1]) and int(results[0].sum()) == 37


def test_empty_batch_is_a_no_op():
    for fn in BACKENDS.values():
        counts, bad = _run(fn, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 2)
        assert int(counts.sum()) == 0 and bad == 0


def test_votes_backend_resolution():
    cpu = torch.device("cpu")
    assert resolve_votes_backend("auto", cpu, torch.float32) == "numba"
    assert resolve_votes_backend("auto", cpu, torch.float64) == "numba"
    assert resolve_votes_backend("auto", cpu, torch.float16) == "torch"
    assert resolve_votes_backend("auto", cpu, torch.int64) == "torch"
    assert resolve_votes_backend("torch", cpu, torch.float32) == "torch"
    with pytest.raises(ValueError):
        resolve_votes_backend("numba", cpu, torch.bfloat16)
    with pytest.raises(ValueError):
        resolve_votes_backend("cuda-magic", cpu, torch.float32)


def test_triton_votes_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton"):
        resolve_votes_backend("triton", torch.device("cpu"), torch.float32)


class _Quantized(torch.nn.Module):
    """Coarse logits with many exact ties, so argmax tie-breaking matters."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.dtype = dtype
        self.w = torch.nn.Parameter(torch.randn(48, 6, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return (x.reshape(len(x), -1) @ self.w).round().to(self.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_engine_counts_do_not_depend_on_votes_backend(dtype):  # integer logits: refused
    model = _Quantized(dtype).eval()
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    draws = [Draw(Stream.SELECT, 9), Draw(Stream.ESTIMATE, torch.tensor([40, 1, 17]))]
    kw = dict(seed=2, ids=torch.arange(3), batch_size=13)
    runs = [count_votes(model, x, sigma, draws, votes_backend=b, **kw)
            for b in ("auto", "torch")]
    assert torch.equal(runs[0], runs[1])
    assert runs[0][1].sum(1).tolist() == [40, 1, 17]


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_engine_refuses_non_finite_logits_with_every_backend(backend):
    class SometimesNaN(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 3)
            out[x.reshape(len(x), -1)[:, 0] > 0.9] = float("nan")
            return out
    with pytest.raises(ValueError, match="NaN or inf"):
        count_votes(SometimesNaN(), torch.rand(2, 1, 4, 4), torch.tensor([0.5, 0.5]),
                    [Draw(Stream.ESTIMATE, 200)], seed=0, ids=torch.arange(2), batch_size=64,
                    votes_backend=backend)


def test_add_votes_dispatch():
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    for backend in ("numba", "torch"):
        counts = torch.zeros(1, 2, dtype=torch.int64)
        bad = torch.zeros(1, dtype=torch.int64)
        add_votes(counts, bad, logits, torch.zeros(2, dtype=torch.int64), backend)
        assert counts.tolist() == [[1, 1]]
