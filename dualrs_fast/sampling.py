"""The Monte Carlo engine: count a model's votes under Gaussian noise for many inputs at once.

Samples of all inputs and streams are laid out on one flat row axis and streamed through the
model in batches of ``batch_size`` rows, so a batch packs many inputs, memory stays bounded for
any n, and the counts (kept on the model's device) do not depend on batch size: each row's
noise is a pure function of (seed, id, stream, j).
"""
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from tqdm.auto import tqdm

from .noise import Stream, fill_noisy_rows, resolve_backend
from .validation import check_logits, check_model_is_deterministic


@dataclass(frozen=True)
class Draw:
    """``num_samples`` noisy samples per input (an int, or one count per input) from ``stream``."""
    stream: Stream
    num_samples: Union[int, torch.Tensor]


def model_device(model, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return fallback


def _channels_last_dest(shape) -> torch.Tensor:
    """Position of each NCHW-flat element inside an NHWC row."""
    c, h, w = shape
    return torch.arange(h * w * c).reshape(h, w, c).permute(2, 0, 1).reshape(-1)


_COMPILED = {}


def _compiled(model):
    key = id(model)
    if key not in _COMPILED:
        _COMPILED[key] = (model, torch.compile(model, dynamic=False))
    return _COMPILED[key][1]


def count_votes(model, x: torch.Tensor, sigma: torch.Tensor, draws: Sequence[Draw], *, seed: int,
                ids: torch.Tensor, batch_size: int, num_classes=None, channels_last=None,
                compile: bool = False, noise_backend: str = "auto", progress: bool = False,
                pass_sigma: bool = False, desc: str = "sampling") -> torch.Tensor:
    """Votes of ``model`` on x[i] + sigma[i] * noise -> int64 counts (len(draws), B, K).

    x: (B, ...) validated batch; sigma: (B,) per-input noise levels; ids: (B,) noise keys.
    pass_sigma: call ``model(noisy, sigma_rows)`` (noise-conditioned models, denoisers) with
    each row's noise level, a float32 tensor (rows,).
    """
    check_model_is_deterministic(model)
    batch = x.shape[0]
    device = model_device(model, x.device)
    backend = resolve_backend(noise_backend, device)
    gen_device = torch.device("cpu") if backend == "numba" else device
    x_flat = x.detach().reshape(batch, -1).to(gen_device).contiguous()
    sigma = sigma.to(device=gen_device, dtype=x_flat.dtype).contiguous()
    ids = ids.to(gen_device).contiguous()
    dim = x_flat.shape[1]

    # One segment per (draw, input): its samples occupy a contiguous range of rows.
    per_input = torch.stack([torch.as_tensor(d.num_samples, dtype=torch.int64).expand(batch)
                             for d in draws]).reshape(-1)
    seg_end = torch.cumsum(per_input, 0)
    seg_start = seg_end - per_input
    seg_stream = torch.tensor([int(d.stream) for d in draws]).repeat_interleave(batch)
    total = int(seg_end[-1])

    use_cl = (x.dim() == 4 and x.shape[1] > 1) if channels_last is None else bool(channels_last)
    if use_cl and x.dim() != 4:
        raise ValueError("channels_last needs (B, C, H, W) inputs")
    dest = _channels_last_dest(x.shape[1:]) if use_cl else torch.arange(dim)
    dest = dest.to(gen_device)
    rows_per_batch = min(batch_size, total) if not compile else batch_size
    buf = torch.zeros(rows_per_batch, dim, dtype=x_flat.dtype, device=gen_device)
    forward = _compiled(model) if compile else model
    sigma_dev = sigma.to(device=device, dtype=torch.float32)

    counts = None
    finite = torch.ones((), dtype=torch.bool, device=device)
    with torch.inference_mode(), tqdm(total=total, unit="samples", unit_scale=True, desc=desc,
                                      disable=not progress, leave=False) as bar:
        for start in range(0, total, rows_per_batch):
            rows = torch.arange(start, min(start + rows_per_batch, total))
            m = rows.numel()
            seg = torch.searchsorted(seg_end, rows, right=True)
            row_j = rows - seg_start[seg]
            row_input = seg % batch
            fill_noisy_rows(buf[:m], x_flat, sigma, ids, seed, row_input.to(gen_device),
                            seg_stream[seg].to(gen_device), row_j.to(gen_device), dest, backend)
            # compile: keep one static shape; the tail rows of a short last batch are ignored.
            noisy = buf if compile else buf[:m]
            if use_cl:
                c, h, w = x.shape[1:]
                noisy = noisy.view(-1, h, w, c).permute(0, 3, 1, 2)
            else:
                noisy = noisy.view((-1,) + tuple(x.shape[1:]))
            noisy = noisy.to(device, non_blocking=True)
            if pass_sigma:
                sigma_rows = sigma_dev[row_input.to(device)]
                if noisy.shape[0] > m:  # compile padding
                    sigma_rows = torch.cat([sigma_rows, sigma_rows[-1:].expand(noisy.shape[0] - m)])
                logits = forward(noisy, sigma_rows)
            else:
                logits = forward(noisy)
            num_classes = check_logits(logits, noisy.shape[0], num_classes)
            logits = logits[:m]
            finite &= torch.isfinite(logits).all()  # checked once at the end: no sync per batch
            if counts is None:
                counts = torch.zeros(len(draws) * batch * num_classes, dtype=torch.int64,
                                     device=device)
            slot = seg.to(device) * num_classes + logits.argmax(1)
            counts.index_add_(0, slot, torch.ones_like(slot))
            bar.update(m)
    if not bool(finite):
        raise ValueError("model returned NaN or inf logits on noisy inputs; no certificate")
    return counts.view(len(draws), batch, num_classes)
