"""Benchmarks: `pytest bench/` (full sizes) or `BENCH_SMOKE=1 pytest bench/` (tiny, for CI)."""
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
