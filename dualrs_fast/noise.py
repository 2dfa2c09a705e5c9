"""Noisy batches: x + sigma * noise(seed, id, stream, j), dispatched to the fastest backend.

The noise is specified in ``dualrs_fast.kernels`` (counter-based Philox4x32-10 + Box-Muller
in float64, x + sigma * z rounded once to x's dtype), so every backend draws the same noise
for the same (seed, input id, stream, sample index): for float32 inputs bit for bit but in
rare float64 near-ties, for float64 inputs up to the last bits of log/sin/cos:

- ``numba-simd`` -- CPU, fused kernel (``kernels/noise_numba_simd.py``) with vectorised
  float64 log / sin / cos (FMA polynomials, within 1 ulp of libm); the CPU default where the
  CPU has AVX2 and FMA (throughput per backend: ``bench/RESULTS.md``).
- ``numba``  -- CPU, the same fused kernel with the C library's log / sin / cos (scalar);
  the CPU default on CPUs without AVX2 + FMA, where the polynomials would not vectorise.
- ``triton`` -- CUDA, fused kernel (``kernels/noise_triton.py``); the CUDA default when
  triton is installed. (On the CPU only under ``TRITON_INTERPRET=1``, for tests.)
- ``torch``  -- any device, the plain-PyTorch reference (``kernels/philox_torch.py``); the
  fallback on other devices.

float32 noise would be recognisable from one noisy row (issue 20): the noise is float64 for
every input dtype. float64 inputs' radius is drawn to float64's full relative precision
(64-bit uniforms, their tails redrawn from a second Philox block, ``kernels/__init__.py``), so
a model that knows sigma finds no lattice of the uniforms in the radius at float64
resolution; float32 inputs' noise is unchanged by it. (float64 inputs' angle still shows its
53-bit grid near the axes: ``docs/threat-model.md``.)
"""
import contextlib
import functools
import os
from enum import IntEnum
from typing import Optional

import torch

from .kernels import philox_torch

BACKENDS = ("auto", "numba", "numba-simd", "torch", "triton")


class Stream(IntEnum):
    """Independent noise streams: selection and estimation samples never share noise."""
    SELECT = 0
    ESTIMATE = 1
    PREDICT = 2
    ESTIMATOR_SELECT = 3
    ESTIMATOR_ESTIMATE = 4
    ESTIMATOR_PREDICT = 5


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device) -> bool:
    """Can Triton kernels run on ``device``? (CUDA with triton installed, or any device's
    tensors on the CPU under TRITON_INTERPRET=1.)"""
    if device.type != "cuda" and not (device.type == "cpu" and triton_interpreted()):
        return False
    try:
        import triton
    except ImportError:
        return False
    del triton  # importable is all that is asked here
    return True


@functools.lru_cache(maxsize=None)
def cpu_has_avx2_fma() -> bool:
    """Will numba-simd's float64 polynomials vectorise (AVX2 + FMA) in the code numba
    generates? The host CPU's features, or those numba was told to target with
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES (e.g. ``generic`` for portable caches)."""
    try:
        import numba
        from llvmlite import binding
        if numba.config.CPU_NAME not in (None, "host"):
            features = {f[1:]: f[0] == "+" for f in (numba.config.CPU_FEATURES or "").split(",")
                        if f[:1] in "+-" and len(f) > 1}
        else:
            features = binding.get_host_cpu_features()
    except Exception:  # cannot tell: take the portable kernel
        return False
    return bool(features.get("avx2")) and bool(features.get("fma"))


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> numba-simd on the CPU (numba without AVX2 + FMA), triton on CUDA (torch
    without triton / elsewhere)."""
    if backend not in BACKENDS:
        raise ValueError(f"noise backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "numba-simd" if cpu_has_avx2_fma() else "numba"
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if backend in ("numba", "numba-simd") and device.type != "cpu":
        raise ValueError(f"the {backend} noise backend runs on the CPU only")
    if backend == "triton" and not triton_available(device):
        raise ValueError("the triton noise backend needs a CUDA device and the triton package "
                         "(or TRITON_INTERPRET=1 on the CPU, for tests)")
    return backend


@contextlib.contextmanager
def numba_threads_like_torch():
    """Run a parallel numba kernel on torch's thread count and leave torch's as it was.

    numba's OpenMP threading layer shares torch's OpenMP runtime: a kernel launch set the
    process's OpenMP thread count to numba's (NUMBA_NUM_THREADS, every core), so after one
    noisy batch torch.set_num_threads(1) (the CLI's --threads, each --procs worker's share of
    the cores) was silently undone and the workers oversubscribed the CPU."""
    import numba
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def fill_noisy_rows(out: torch.Tensor, x_flat: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor,
                    seed: int, row_input: torch.Tensor, row_stream: torch.Tensor, row_j: torch.Tensor,
                    dest: Optional[torch.Tensor], backend: str,
                    channels_last_shape: Optional[tuple] = None) -> None:
    """out[r, dest[e]] = x_flat[row_input[r], e] + sigma[row_input[r]] * noise_e(row).

    ``dest`` None is the identity. ``channels_last_shape`` (C, H, W), if given, must describe
    the same permutation as ``dest`` (the triton kernel computes it instead of reading it).
    ``backend`` is a resolved backend name (see ``resolve_backend``).
    """
    if backend == "numba":
        from .kernels.noise_numba import noisy_rows_into
        with numba_threads_like_torch():
            noisy_rows_into(out, x_flat, sigma, ids, seed, row_input, row_stream, row_j, dest)
        return
    if backend == "numba-simd":
        from .kernels.noise_numba_simd import noisy_rows_into
        with numba_threads_like_torch():
            noisy_rows_into(out, x_flat, sigma, ids, seed, row_input, row_stream, row_j, dest)
        return
    if backend == "triton":
        if dest is not None and channels_last_shape is None:
            raise ValueError("the triton noise kernel takes channels_last_shape, not dest")
        from .kernels.noise_triton import noisy_rows_into
        noisy_rows_into(out, x_flat, sigma, ids, seed, row_input, row_stream, row_j,
                        channels_last_shape=channels_last_shape)
        return
    if backend != "torch":
        raise ValueError(f"unknown noise backend {backend!r}")
    _write_rows(out, philox_torch.noisy_rows(x_flat, sigma, ids, seed, row_input, row_stream,
                                             row_j), dest)


def _write_rows(out: torch.Tensor, rows: torch.Tensor, dest: Optional[torch.Tensor]) -> None:
    """The reference's rows into ``out``, element e at dest[e] (None: in place)."""
    if dest is None:
        out.copy_(rows)
    else:
        out[:, dest] = rows.to(out.dtype)


def fill_noisy_row_pairs(out_a: torch.Tensor, out_b: torch.Tensor, x_flat: torch.Tensor,
                         sigma_a: torch.Tensor, sigma_b: torch.Tensor, ids: torch.Tensor, seed: int,
                         row_input: torch.Tensor, row_stream: torch.Tensor, row_j: torch.Tensor,
                         dest: Optional[torch.Tensor], backend: str,
                         channels_last_shape: Optional[tuple] = None) -> None:
    """``fill_noisy_rows`` at two noise levels from one draw of the noise: out_a at sigma_a,
    out_b at sigma_b, each equal to what ``fill_noisy_rows`` writes at its sigma with the same
    counters (the pair kernels, ``kernels/noise_pair_*.py``)."""
    if backend in ("numba", "numba-simd"):
        from .kernels.noise_pair_numba import noisy_row_pairs_into
        with numba_threads_like_torch():
            noisy_row_pairs_into(out_a, out_b, x_flat, sigma_a, sigma_b, ids, seed, row_input,
                                 row_stream, row_j, dest, backend=backend)
        return
    if backend == "triton":
        if dest is not None and channels_last_shape is None:
            raise ValueError("the triton noise kernel takes channels_last_shape, not dest")
        from .kernels.noise_pair_triton import noisy_row_pairs_into
        noisy_row_pairs_into(out_a, out_b, x_flat, sigma_a, sigma_b, ids, seed, row_input,
                             row_stream, row_j, channels_last_shape=channels_last_shape)
        return
    if backend != "torch":
        raise ValueError(f"unknown noise backend {backend!r}")
    from .kernels.noise_pair_torch import noisy_row_pairs
    for out, rows in zip((out_a, out_b), noisy_row_pairs(x_flat, sigma_a, sigma_b, ids, seed,
                                                         row_input, row_stream, row_j)):
        _write_rows(out, rows, dest)
