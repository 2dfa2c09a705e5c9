"""Certify throughput relative to the model's forward-only throughput on the same noisy
batches (ratio 1.0 = sampling, counting and statistics cost nothing)."""
import time

import pytest
import torch

import dualrs_fast as drs
from dualrs_fast.models import SmallCNN, TinyMLP

from bench_utils import SMOKE, forward_only_seconds, noisy_batches

N = 200 if SMOKE else 10_000
N0 = 10 if SMOKE else 100
BATCH = 1000
INPUTS = 2 if SMOKE else 4


@pytest.mark.parametrize("arch", [SmallCNN, TinyMLP])
def test_certify_vs_forward_only(benchmark, arch):
    torch.manual_seed(0)
    model = arch().eval()
    x = torch.rand(INPUTS, 1, 28, 28)
    samples = INPUTS * (N0 + N)
    batches = noisy_batches(x[0], 0.25, N0 + N, BATCH)
    forward = forward_only_seconds(model, batches) * INPUTS  # same number of samples

    result = benchmark.pedantic(drs.certify, args=(model, x), rounds=3, warmup_rounds=1,
                                kwargs=dict(sigma=0.25, n0=N0, n=N, alpha=0.001, batch_size=BATCH))
    certify = benchmark.stats.stats.min
    benchmark.extra_info.update(
        samples_per_s_certify=samples / certify, samples_per_s_forward=samples / forward,
        ratio_certify_over_forward=forward / certify)
    print(f"\n{arch.__name__}: certify {samples / certify:,.0f} samples/s, forward-only "
          f"{samples / forward:,.0f} samples/s, ratio {forward / certify:.2f}")
    assert result.prediction.shape == (INPUTS,)
