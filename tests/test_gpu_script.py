"""bench/gpu.sh, the GPU checks: without a CUDA device it stops before running anything,
with one line on stderr and exit status 2, and leaves its output folder uncreated."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu.sh"


def _run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHON=sys.executable, **env))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_script_fails_cleanly_without_a_gpu(tmp_path):
    out = tmp_path / "tables"
    proc = _run(str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert "no CUDA device" in proc.stderr and "nothing run" in proc.stderr
    assert not out.exists()


def test_gpu_script_needs_an_output_folder():
    proc = _run()
    assert proc.returncode == 2 and proc.stderr.strip() == "usage: bash bench/gpu.sh OUT_DIR"
