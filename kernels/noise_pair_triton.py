"""Shared-noise pair on the GPU (Triton): one z per element, two noise levels.

    out_a[r] = x[i] + sigma_a[i] * z,   out_b[r] = x[i] + sigma_b[i] * z

(reference: ``noise_pair_torch``). ``noise_triton``'s kernel with a second sigma and output:
its Philox, Box-Muller and store helpers, imported, so each output is bit for bit what
``noise_triton.noisy_rows_into`` writes at its sigma with the same counters. Like
``noise_triton``, set ``TRITON_INTERPRET=1`` before the first import to run it on the CPU
(tests).
"""
import torch
import triton
import triton.language as tl

from .noise_triton import (BLOCK, INTERPRETED, _box_muller, _row_block, _store, launch_layout)
from .philox_torch import PHILOX_ROUNDS, split_seed


@triton.jit(do_not_specialize=["k0", "k1"])
def _noisy_row_pairs_kernel(x_ptr, sigma_a_ptr, sigma_b_ptr, ids_ptr, row_input_ptr,
                            row_stream_ptr, row_j_ptr, out_a_ptr, out_b_ptr, k0, k1, dim,
                            x_row_stride, out_row_stride, channels, hw,
                            CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
                            N_ROUNDS: tl.constexpr, LIBDEVICE: tl.constexpr,
                            FINE: tl.constexpr):
    x_row, out_a_row, s_a, b, words = _row_block(
        x_ptr, out_a_ptr, sigma_a_ptr, ids_ptr, row_input_ptr, row_stream_ptr, row_j_ptr, k0, k1,
        x_row_stride, out_row_stride, BLOCK, N_ROUNDS, FINE)
    r = tl.program_id(0).to(tl.int64)
    out_b_row = out_b_ptr + r * out_row_stride
    s_b = tl.load(sigma_b_ptr + tl.load(row_input_ptr + r))
    z0, z1 = _box_muller(words, BLOCK, LIBDEVICE, FINE)
    e = 2 * b.to(tl.int64)
    _store(x_row, out_a_row, s_a, z0, e, dim, channels, hw, CHANNELS_LAST)
    _store(x_row, out_a_row, s_a, z1, e + 1, dim, channels, hw, CHANNELS_LAST)
    _store(x_row, out_b_row, s_b, z0, e, dim, channels, hw, CHANNELS_LAST)
    _store(x_row, out_b_row, s_b, z1, e + 1, dim, channels, hw, CHANNELS_LAST)


def noisy_row_pairs_into(out_a: torch.Tensor, out_b: torch.Tensor, x_flat: torch.Tensor,
                         sigma_a: torch.Tensor, sigma_b: torch.Tensor, ids: torch.Tensor,
                         seed: int, row_input: torch.Tensor, row_stream: torch.Tensor,
                         row_j: torch.Tensor, channels_last_shape=None) -> None:
    """Fill ``out_a`` and ``out_b`` (R, D, the same row stride) in place; the contract of
    ``noise_triton.noisy_rows_into`` with a second sigma and output."""
    if out_a.shape != out_b.shape or out_a.stride(0) != out_b.stride(0):
        raise ValueError("the two outputs need the same shape and row stride")
    launch = launch_layout(x_flat, (out_a, out_b), channels_last_shape)
    if launch is None:
        return
    grid, (channels, hw) = launch
    k0, k1 = split_seed(seed)
    _noisy_row_pairs_kernel[grid](
        x_flat, sigma_a.to(torch.float64), sigma_b.to(torch.float64), ids, row_input, row_stream,
        row_j, out_a, out_b, k0, k1, out_a.shape[1], x_flat.stride(0), out_a.stride(0), channels,
        hw, CHANNELS_LAST=channels_last_shape is not None, BLOCK=BLOCK, N_ROUNDS=PHILOX_ROUNDS,
        LIBDEVICE=not INTERPRETED, FINE=x_flat.dtype == torch.float64)
