"""CI smoke run of the benchmarks: every benchmark of bench/ with tiny sizes (BENCH_SMOKE=1),
in a subprocess so pytest-benchmark and bench/conftest.py run as in `make bench`; the results
writer is exercised on a temporary file (bench/RESULTS.md is left alone). No timing is
checked."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.skipif(not (BENCH / "test_throughput.py").is_file(), reason="bench/ not present")
def test_benchmarks_smoke(tmp_path):
    pytest.importorskip("pytest_benchmark")
    results = tmp_path / "RESULTS.md"
    env = dict(os.environ, BENCH_SMOKE="1", BENCH_RESULTS=str(results))
    # -P: never import the bare source tree from the working directory
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", str(BENCH), "-q",
                           "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = results.read_text()
    for row in ("(a) certify / forward-only", "(b) certify / Cohen-style loop",
                "(c) Dual RS time / standard RS time", "SMOKE run"):
        assert row in table
