"""Shared-noise pair on the CPU (numba): one z per element, two noise levels.

    out_a[r] = x[i] + sigma_a[i] * z,   out_b[r] = x[i] + sigma_b[i] * z

(reference: ``noise_pair_torch``). Dual RS feeds the estimator x + sigma_e z and the routed
classifier x + sigma(x) z from one draw (``dualrs_fast.shared_noise``). The kernels are the
single-output ones (``noise_numba``, libm; ``noise_numba_simd``, vectorised polynomials) with a
second tail: their own Philox, Box-Muller and x + s * z helpers, imported, so each output is
bit for bit what that backend's ``noisy_rows_into`` writes at its sigma with the same
counters, and the Philox and Box-Muller work of the second output is saved.
"""
import numba
import numpy as np
import torch

from .noise_numba import _CHUNK, _add_scaled_row, _philox_row
from .noise_numba import _box_muller_row as libm_box_muller_row
from .noise_numba import _box_muller_row_fine as libm_box_muller_row_fine
from .noise_numba_simd import _add_scaled_pairs, _allow_512_bit_vectors
from .noise_numba_simd import _box_muller_row as simd_box_muller_row
from .noise_numba_simd import _box_muller_row_fine as simd_box_muller_row_fine
from .philox_torch import check_row_dtypes, split_seed


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_row_pairs_kernel(x, sigma_a, sigma_b, ids, k0, k1, row_input, row_stream, row_j,
                            dest, identity, simd, out_a, out_b):
    """The single-output kernels' loop with two tails; ``simd`` picks noise_numba_simd's
    Box-Muller and tail over noise_numba's (one kernel: numba does not cache closures).
    float32 x and out (float64: ``_noisy_row_pairs_kernel_fine``)."""
    n_rows = out_a.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 1) // 2
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        _allow_512_bit_vectors()  # marks the function that holds this loop body
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty((2, n_blocks), np.float64)  # simd: two rows; libm: one, interleaved
        z_flat = z.reshape(2 * n_blocks)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            _philox_row(bits, n_blocks, np.uint32(row_j[r]), np.uint32(ids[i]),
                        np.uint32(row_stream[r]), k0, k1)
            if simd:
                simd_box_muller_row(bits, n_blocks, z)
                _add_scaled_pairs(out_a, r, x, i, sigma_a[i], z, dim, dest, identity)
                _add_scaled_pairs(out_b, r, x, i, sigma_b[i], z, dim, dest, identity)
            else:
                libm_box_muller_row(bits, n_blocks, z_flat)
                _add_scaled_row(out_a, r, x, i, sigma_a[i], z_flat, dim, dest, identity)
                _add_scaled_row(out_b, r, x, i, sigma_b[i], z_flat, dim, dest, identity)


@numba.njit(parallel=True, nogil=True, cache=True)
def _noisy_row_pairs_kernel_fine(x, sigma_a, sigma_b, ids, k0, k1, row_input, row_stream, row_j,
                                 dest, identity, simd, out_a, out_b):
    """``_noisy_row_pairs_kernel`` for float64 inputs (their radius): a kernel of its own, as
    a float64 branch in the float32 kernel made LLVM's code for float32 rows 1.5x slower."""
    n_rows = out_a.shape[0]
    dim = x.shape[1]
    n_blocks = (dim + 1) // 2
    for chunk in numba.prange((n_rows + _CHUNK - 1) // _CHUNK):
        _allow_512_bit_vectors()  # marks the function that holds this loop body
        bits = np.empty((4, n_blocks), np.uint32)
        z = np.empty((2, n_blocks), np.float64)  # simd: two rows; libm: one, interleaved
        z_flat = z.reshape(2 * n_blocks)
        for r in range(chunk * _CHUNK, min(n_rows, (chunk + 1) * _CHUNK)):
            i = row_input[r]
            c1, c2, c3 = np.uint32(row_j[r]), np.uint32(ids[i]), np.uint32(row_stream[r])
            _philox_row(bits, n_blocks, c1, c2, c3, k0, k1)
            if simd:
                simd_box_muller_row_fine(bits, n_blocks, z, c1, c2, c3, k0, k1)
                _add_scaled_pairs(out_a, r, x, i, sigma_a[i], z, dim, dest, identity)
                _add_scaled_pairs(out_b, r, x, i, sigma_b[i], z, dim, dest, identity)
            else:
                libm_box_muller_row_fine(bits, n_blocks, z_flat, c1, c2, c3, k0, k1)
                _add_scaled_row(out_a, r, x, i, sigma_a[i], z_flat, dim, dest, identity)
                _add_scaled_row(out_b, r, x, i, sigma_b[i], z_flat, dim, dest, identity)


def noisy_row_pairs_into(out_a: torch.Tensor, out_b: torch.Tensor, x_flat: torch.Tensor,
                         sigma_a: torch.Tensor, sigma_b: torch.Tensor, ids: torch.Tensor,
                         seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                         row_j: torch.Tensor, dest=None, backend: str = "numba-simd") -> None:
    """Fill ``out_a`` and ``out_b`` (R, D) in place; the contract of
    ``noise_numba.noisy_rows_into`` with a second sigma and output. ``backend``: "numba" (libm)
    or "numba-simd"."""
    check_row_dtypes(x_flat, out_a, out_b)
    if out_a.shape != out_b.shape:
        raise ValueError(f"the two outputs differ in shape: {tuple(out_a.shape)}, "
                         f"{tuple(out_b.shape)}")
    k0, k1 = split_seed(seed)
    identity = dest is None
    if backend not in ("numba", "numba-simd"):
        raise ValueError(f"no numba pair kernel for backend {backend!r}")
    kernel = (_noisy_row_pairs_kernel_fine if x_flat.dtype == torch.float64
              else _noisy_row_pairs_kernel)
    kernel(x_flat.numpy(), sigma_a.to(torch.float64).numpy(), sigma_b.to(torch.float64).numpy(),
           ids.numpy(), np.uint32(k0), np.uint32(k1), row_input.numpy(), row_stream.numpy(),
           row_j.numpy(), np.zeros(1, np.int64) if identity else dest.numpy(), identity,
           backend == "numba-simd", out_a.numpy(), out_b.numpy())
