#!/usr/bin/env bash
# The GPU checks, for the rare machine with a CUDA device: the Triton kernels compiled for it
# (no interpreter) against the PyTorch references, then `pytest bench/` on CUDA. Installs
# nothing: it uses the environment it is given ($PYTHON, default .venv/bin/python).
#
#   bash bench/gpu.sh OUT_DIR      # writes OUT_DIR/kernels.txt, OUT_DIR/RESULTS.md,
#                                  # OUT_DIR/bench.json; exit 2 (one line) without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ]; then
    echo "usage: bash bench/gpu.sh OUT_DIR" >&2
    exit 2
fi
out=$1
py=${PYTHON:-.venv/bin/python}
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA device visible to $py (torch.cuda.is_available() is False); nothing run" >&2
    exit 2
fi
if ! "$py" -c "import triton" 2>/dev/null; then
    echo "bench/gpu.sh: triton is not importable by $py; nothing run" >&2
    exit 2
fi
mkdir -p "$out"
unset TRITON_INTERPRET
"$py" -m pytest -q -p no:cacheprovider bench/gpu_kernels.py 2>&1 | tee "$out/kernels.txt"
BENCH_DEVICE=cuda BENCH_RESULTS="$out/RESULTS.md" "$py" -m pytest -q -p no:cacheprovider bench \
    --benchmark-disable-gc --benchmark-json "$out/bench.json"
echo "bench/gpu.sh: wrote $out/kernels.txt, $out/RESULTS.md, $out/bench.json"
