"""Plain-PyTorch reference of the shared-noise pair: one z, two noise levels.

    out_a[r] = x[i] + sigma_a[i] * z,   out_b[r] = x[i] + sigma_b[i] * z,   i = row_input[r]

with z = noise(seed, ids[i], row_stream[r], row_j[r]) of the specification
(``philox_torch``), each sum in float64 rounded once to x's dtype. So each output equals
``philox_torch.noisy_rows`` at its own sigma with the same counters, bit for bit; the fused
kernels (``noise_pair_numba``, ``noise_pair_triton``) draw z once for both.
"""
import torch

from .philox_torch import gaussian_noise


def noisy_row_pairs(x: torch.Tensor, sigma_a: torch.Tensor, sigma_b: torch.Tensor, ids, seed: int,
                    row_input, row_stream, row_j):
    """(rows at sigma_a, rows at sigma_b), each shaped like ``philox_torch.noisy_rows``'s."""
    flat = x.reshape(x.shape[0], -1)
    row_input = torch.as_tensor(row_input, dtype=torch.int64, device=x.device)
    noise = gaussian_noise(seed, ids[row_input], row_stream, row_j, flat.shape[1], device=x.device,
                           fine=flat.dtype == torch.float64)
    base = flat[row_input].to(torch.float64)

    def at(sigma):
        scale = sigma.to(device=x.device, dtype=torch.float64)[row_input].unsqueeze(1)
        return (base + scale * noise).to(flat.dtype).reshape((-1,) + tuple(x.shape[1:]))
    return at(sigma_a), at(sigma_b)
