"""Benchmarks: `pytest bench/` (full sizes, writes bench/RESULTS.md) or `BENCH_SMOKE=1 pytest
bench/` (tiny sizes, for CI; writes a results file only if BENCH_RESULTS names one)."""
import os
import time

import numba
import pytest
import torch

import bench_utils

# The engine tunes glibc's allocator on its first CPU run (sampling.tune_cpu_allocator_once);
# the benchmarks measure the untuned default first and the tuned one last, explicitly.
os.environ.setdefault("DUALRS_FAST_TUNE_MALLOC", "0")

_START = {}


def pytest_sessionstart(session):
    _START.update(wall=time.time(), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  load=bench_utils.load_average())


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(bench_utils.THREADS)
    numba.set_num_threads(min(bench_utils.THREADS, numba.config.NUMBA_NUM_THREADS))


def pytest_sessionfinish(session, exitstatus):
    if exitstatus != 0 or not bench_utils.complete():
        return  # a partial run (-k, failures) never overwrites the table
    if bench_utils.SMOKE and "BENCH_RESULTS" not in os.environ:
        return
    bench_utils.write_results(bench_utils.RESULTS_PATH, _START.get("started", "?"),
                              _START.get("load", "n/a"), time.time() - _START.get("wall", time.time()))
    print(f"\nwrote {bench_utils.RESULTS_PATH}")
