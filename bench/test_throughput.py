"""Throughput benchmarks (pytest-benchmark). One run measures everything the ratios need:

(a) certify throughput / the model's forward-only throughput on the same noisy batches,
    for a tiny MLP, a small CNN and ResNet-20;
(b) certify throughput / a plain Cohen-style loop with the same model, n and batch size;
(c) Dual RS certify time / standard RS certify time;
plus the noise and vote kernels per backend (which one ``auto`` should pick on this CPU).

A complete run writes bench/RESULTS.md (see conftest.py). No timing is asserted.
"""
import functools
import statistics
import time

import pytest
import torch

import dualrs_fast as drs
from dualrs_fast.data import load_default_split
from dualrs_fast.models import ResNet20, TinyMLP, load_default_classifier, load_default_dual
from dualrs_fast.noise import Stream, fill_noisy_rows
from dualrs_fast.sampling import add_votes, tune_cpu_allocator

from bench_utils import (ALPHA, BATCH, DUAL_INPUTS, DUAL_ROUNDS, INPUTS, N, N0, N_RESNET, ROUNDS,
                         SIGMA, SMOKE, best_seconds, certify_batches,
                         median_seconds, cohen_certify, forward_only,
                         record)

@functools.lru_cache(maxsize=None)
def _test_images():
    return load_default_split()[2]


def _inputs(k: int) -> torch.Tensor:
    return _test_images()[:k].clone()


@functools.lru_cache(maxsize=None)
def _model(key: str):
    torch.manual_seed(0)
    if key == "tiny_mlp":
        return TinyMLP().eval()
    if key == "small_cnn":
        return load_default_classifier(0.25)  # the sigma = 0.25 expert of the Dual RS runs
    return ResNet20().eval()


def _n(key: str) -> int:
    return N_RESNET if key == "resnet20" else N


class _Interleaved:
    """A pytest-benchmark ``setup`` that times a reference workload right before every round,
    so each round is a (reference, benchmarked) pair measured back to back: machine-speed
    drift and allocator state hit both sides of the pair alike."""

    def __init__(self, fn, warmup_rounds: int = 1):
        self.fn, self.skip, self.times = fn, warmup_rounds, []

    def __call__(self):
        start = time.perf_counter()
        self.fn()
        if self.skip:
            self.skip -= 1
        else:
            self.times.append(time.perf_counter() - start)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    def paired(self, benchmark, reference_over_timed: bool = True) -> float:
        """Median over rounds of reference / timed (or timed / reference)."""
        timed = list(benchmark.stats.stats.data)
        assert len(timed) == len(self.times)
        pairs = [r / t if reference_over_timed else t / r for r, t in zip(self.times, timed)]
        return float(statistics.median(pairs))


def _certify(model, x, n, noise_backend="auto"):
    return drs.certify(model, x, sigma=SIGMA, n0=N0, n=n, alpha=ALPHA, batch_size=BATCH, seed=0,
                       noise_backend=noise_backend)


# (model, ratio, noise backend); "auto" is numba-simd on AVX2 + FMA CPUs, "numba" the libm kernel
CASES = [("tiny_mlp", "a", "auto"), ("small_cnn", "a", "auto"), ("resnet20", "a", "auto"),
         ("tiny_mlp", "b", "auto"), ("small_cnn", "b", "auto"),
         ("tiny_mlp", "a", "numba"), ("small_cnn", "a", "numba"),
         ("tiny_mlp", "b", "numba"), ("small_cnn", "b", "numba")]


@pytest.mark.parametrize("key,ratio,backend", CASES,
                         ids=[f"{k}-ratio_{r}-{b}" for k, r, b in CASES])
def test_models(benchmark, key, ratio, backend):
    """ratio a: certify timed, forward-only on its batches before each round;
    ratio b: the Cohen-style loop timed, certify before each round."""
    _ratio(benchmark, key, ratio, backend, "" if backend == "auto" else "@" + backend)


def _ratio(benchmark, key, ratio, backend, tag):
    model, x, n = _model(key), _inputs(INPUTS[key]), _n(key)
    samples = x.shape[0] * (N0 + n)
    if ratio == "a":
        batches = certify_batches(x, SIGMA, N0, n, BATCH)
        assert sum(len(b) for b in batches) == samples
        forward = _Interleaved(lambda: forward_only(model, batches))
        r = benchmark.pedantic(_certify, args=(model, x, n, backend), setup=forward,
                               rounds=ROUNDS[key], warmup_rounds=1)
        assert r.prediction.shape == (x.shape[0],)
        certify_s, value = median_seconds(benchmark), forward.paired(benchmark)
        record(key + tag, certify_s=certify_s, certify_rate=samples / certify_s,
               forward_s=forward.median, forward_rate=samples / forward.median, ratio=value)
        benchmark.extra_info.update(certify_samples_per_s=samples / certify_s,
                                    forward_samples_per_s=samples / forward.median, ratio_a=value)
        print(f"\n{key}{tag}: certify {samples / certify_s:,.0f} samples/s, forward-only "
              f"{samples / forward.median:,.0f} samples/s, (a) = {value:.2f}")
    else:
        certify = _Interleaved(lambda: _certify(model, x, n, backend), warmup_rounds=0)
        cohen_certify(model, x[:1], SIGMA, N0, 2 * BATCH, ALPHA, BATCH, 10)  # warm-up
        preds, _ = benchmark.pedantic(cohen_certify, setup=certify, rounds=ROUNDS[key],
                                      args=(model, x, SIGMA, N0, n, ALPHA, BATCH, 10))
        assert len(preds) == x.shape[0]
        cohen_s, value = median_seconds(benchmark), certify.paired(benchmark, False)
        record("cohen:" + key + tag, cohen_s=cohen_s, cohen_rate=samples / cohen_s,
               certify_s=certify.median, ratio=value)
        benchmark.extra_info.update(cohen_samples_per_s=samples / cohen_s, ratio_b=value)
        print(f"\n{key}{tag}: Cohen-style loop {samples / cohen_s:,.0f} samples/s, certify "
              f"{samples / certify.median:,.0f} samples/s, (b) = {value:.2f}")


# The embedded Dual RS (the class-group estimator over the sigma-1.0 classifier + the three
# experts) with the plain procedure (estimator_rounds=1: all n estimator samples) and the
# default sequential one.
DUAL_CASES = {"class_group-plain": ("class_group", 1),
              "class_group-sequential": ("class_group", None)}


@pytest.mark.parametrize("name", list(DUAL_CASES))
def test_dual_rs(benchmark, name):
    arch, rounds = DUAL_CASES[name]
    dual = load_default_dual(estimator=arch)
    rounds = {} if rounds is None else {"estimator_rounds": rounds}
    x = _inputs(DUAL_INPUTS)
    expert = dual.routes[0].classifier  # standard RS: the sigma = 0.25 expert, same inputs
    standard = _Interleaved(lambda: _certify(expert, x, N))
    r = benchmark.pedantic(dual.certify, args=(x,), setup=standard, rounds=DUAL_ROUNDS,
                           warmup_rounds=1, kwargs=dict(n0=N0, n=N, alpha=ALPHA,
                                                        batch_size=BATCH, seed=0, **rounds))
    routed = int((r.level >= 0).sum())
    dual_s, value = median_seconds(benchmark), standard.paired(benchmark, False)
    record("dual:" + name, dual_s=dual_s, standard_s=standard.median, routed=routed,
           certified=int((r.prediction != drs.ABSTAIN).sum()), ratio=value,
           estimator_samples=float(r.estimator_samples.double().mean()),
           radius=float(r.radius.double().mean()))
    benchmark.extra_info.update(routed=routed, levels=r.level.tolist(), ratio_c=value)
    print(f"\ndual RS ({name}): {dual_s:.2f} s vs standard {standard.median:.2f} s, "
          f"(c) = {value:.2f}, levels {r.level.tolist()}, estimator samples "
          f"{r.estimator_samples.tolist()}")


ROWS, DIM = (200, 784) if SMOKE else (BATCH, 784)


@pytest.mark.parametrize("backend", ["numba", "numba-simd", "torch"])
def test_noise_backend(benchmark, backend):
    x = _inputs(4).reshape(4, -1).contiguous()
    out = torch.empty(ROWS, DIM)
    ri = torch.arange(ROWS) % 4
    rs = torch.full((ROWS,), int(Stream.ESTIMATE))
    rj = torch.arange(ROWS)
    benchmark.pedantic(fill_noisy_rows, rounds=3 if SMOKE else 10, warmup_rounds=1,
                       args=(out, x, torch.full((4,), SIGMA), torch.arange(4), 0, ri, rs, rj,
                             None, backend))
    record("noise:" + backend, normals_per_s=ROWS * DIM / best_seconds(benchmark), rows=ROWS)
    benchmark.extra_info.update(normals_per_s=ROWS * DIM / best_seconds(benchmark))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_votes_backend(benchmark, backend):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, 10, generator=g)
    seg = torch.randint(0, 8, (BATCH,), generator=g)
    counts = torch.zeros(8, 10, dtype=torch.int64)
    bad = torch.zeros(1, dtype=torch.int64)
    benchmark.pedantic(add_votes, args=(counts, bad, logits, seg, backend),
                       rounds=20 if SMOKE else 200, warmup_rounds=1)
    record("votes:" + backend, us=best_seconds(benchmark) * 1e6)


# Last, because it changes the process for good: the same ratios with glibc's malloc tuned
# (sampling.tune_cpu_allocator; the engine's default, off above), which removes the page faults
# of large activations.
TUNED = [("small_cnn", "a"), ("small_cnn", "b"), ("resnet20", "a")]


@pytest.mark.parametrize("key,ratio", TUNED, ids=[f"{k}-ratio_{r}" for k, r in TUNED])
def test_models_with_tuned_allocator(benchmark, key, ratio):
    if not tune_cpu_allocator():
        pytest.skip("glibc mallopt not available")
    _ratio(benchmark, key, ratio, "auto", "+malloc")
