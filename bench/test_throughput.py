"""Throughput benchmarks (pytest-benchmark). One run measures everything the ratios need:

(a) certify throughput / the model's forward-only throughput on the same noisy batches,
    for a tiny MLP, a small CNN and ResNet-20 (whose certify runs a copy with BatchNorm
    folded into its convolutions, so its (a) can exceed 1; also measured with fold_bn=False);
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

from bench_utils import (ALPHA, BATCH, DEVICE, DUAL_INPUTS, DUAL_N, DUAL_ROUNDS, INPUTS, N, N0,
                         N_RESNET, ROUNDS, SIGMA, SMOKE, best_seconds, certify_batches,
                         median_seconds, cohen_certify, forward_only,
                         record)

@functools.lru_cache(maxsize=None)
def _test_images():
    return load_default_split()[2]


def _inputs(k: int) -> torch.Tensor:
    return _test_images()[:k].clone().to(DEVICE)


@functools.lru_cache(maxsize=None)
def _model(key: str):
    torch.manual_seed(0)
    if key == "tiny_mlp":
        return TinyMLP().eval().to(DEVICE)
    if key == "small_cnn":  # the sigma = 0.25 expert of the Dual RS runs
        return load_default_classifier(0.25, map_location=DEVICE)
    return ResNet20().eval().to(DEVICE)


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


def _certify(model, x, n, noise_backend="auto", fold_bn=None):
    return drs.certify(model, x, sigma=SIGMA, n0=N0, n=n, alpha=ALPHA, batch_size=BATCH, seed=0,
                       noise_backend=noise_backend, fold_bn=fold_bn)


def test_resnet20_without_folded_batchnorm(benchmark):
    """(a) for ResNet-20 with fold_bn=False: the model's own forward, BatchNorm unfolded.
    Forward-only always runs the model as given, so (a) above over this one is what the
    folded copy gains."""
    _ratio(benchmark, "resnet20", "a", "auto", "-nofold", fold_bn=False)


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


def _ratio(benchmark, key, ratio, backend, tag, fold_bn=None):
    model, x, n = _model(key), _inputs(INPUTS[key]), _n(key)
    samples = x.shape[0] * (N0 + n)
    if ratio == "a":
        batches = certify_batches(x, SIGMA, N0, n, BATCH)
        assert sum(len(b) for b in batches) == samples
        forward = _Interleaved(lambda: forward_only(model, batches))
        r = benchmark.pedantic(_certify, args=(model, x, n, backend, fold_bn), setup=forward,
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
# experts; inputs routed to sigma 1.0 share the expert's pass with the estimator) on the first
# DUAL_INPUTS test images, with the default sequential estimator at each budget and the plain
# procedure (estimator_rounds=1: all n estimator samples) at the first; standard RS with each
# expert on the same inputs is timed right before every round.
DUAL_CASES = {f"class_group-sequential-n{n}": (n, None) for n in DUAL_N}
DUAL_CASES[f"class_group-plain-n{DUAL_N[0]}"] = (DUAL_N[0], 1)


@pytest.mark.parametrize("name", list(DUAL_CASES))
def test_dual_rs(benchmark, name):
    n, rounds = DUAL_CASES[name]
    dual = load_default_dual(map_location=DEVICE)
    options = {} if rounds is None else {"estimator_rounds": rounds}
    x = _inputs(DUAL_INPUTS)
    kw = dict(n0=N0, n=n, alpha=ALPHA, batch_size=BATCH, seed=0)
    warmup = 1 if n == DUAL_N[0] else 0  # the references skip what the benchmark warms up
    standards = {s: _Interleaved(functools.partial(
        drs.certify, dual.routes[k].classifier, x, sigma=s, **kw), warmup_rounds=warmup)
        for k, s in enumerate(dual.sigmas)}

    def setup():
        for s in standards.values():
            s()
    r = benchmark.pedantic(dual.certify, args=(x,), setup=setup, rounds=DUAL_ROUNDS,
                           warmup_rounds=warmup, kwargs=dict(kw, **options))
    dual_s = median_seconds(benchmark)
    ratios = {s: t.paired(benchmark, False) for s, t in standards.items()}
    per_level = {}
    for k, s in [(-1, None)] + list(enumerate(dual.sigmas)):
        at = (r.level == k).cpu()
        if at.any():
            per_level["abstain" if k < 0 else f"{s:g}"] = dict(
                inputs=int(at.sum()), shared=int(r.shared[at].sum()),
                estimator_samples=float(r.estimator_samples[at].double().mean()),
                sample_ratio=float(r.samples[at].double().mean()) / (N0 + n))
    record("dual:" + name, dual_s=dual_s, n=n, standard_s={s: t.median for s, t in
                                                           standards.items()},
           ratios=ratios, ratio=ratios[0.5], per_level=per_level,
           routed=int((r.level >= 0).sum()), certified=int((r.prediction != drs.ABSTAIN).sum()),
           estimator_samples=float(r.estimator_samples.double().mean()),
           radius=float(r.radius.double().mean()))
    benchmark.extra_info.update(ratio_c=ratios[0.5], per_level=per_level)
    print(f"\ndual RS ({name}): {dual_s:.2f} s; over standard RS at sigma "
          + ", ".join(f"{s:g}: {v:.2f}" for s, v in ratios.items()) + f"; per level {per_level}")


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
