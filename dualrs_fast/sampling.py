"""The Monte Carlo engine: count a model's votes under Gaussian noise for many inputs at once.

Samples of all inputs and streams are laid out on one flat row axis and streamed through the
model in batches of ``batch_size`` rows, so a batch packs many inputs, memory stays bounded for
any n, and the counts (kept on the model's device) do not depend on batch size: each row's
noise is a pure function of (seed, id, stream, j).

Per batch: one fused noise kernel writes x + sigma * noise straight into the model's input
layout (channels_last for images), the model runs, and one fused vote kernel turns the logits
into per-(draw, input) histograms and counts non-finite rows -- no host sync until the end.
Kernels: numba on the CPU, Triton on CUDA, plain PyTorch elsewhere (``kernels/``).
"""
import contextlib
import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from .batch_probe import PROBE_ROWS, check_batch_independent, rtol
from .fold import agrees_on, fold_wanted, folded_copy
from .noise import (Stream, fill_noisy_row_pairs, fill_noisy_rows, resolve_backend,
                    triton_available)
from .progress import progress_bar
from .validation import (MAX_SAMPLES, check_logits, check_model_callable,
                         check_model_input_dtype, check_model_is_deterministic,
                         check_sigma_resolution)

VOTES_BACKENDS = ("auto", "numba", "torch", "triton")


@dataclass(frozen=True)
class Draw:
    """``num_samples`` noisy samples per input (an int, or one count per input) from ``stream``,
    with sample indices starting at ``start`` (an int or one per input): drawing a stream in
    several rounds with increasing ``start`` yields exactly the samples of one big draw."""
    stream: Stream
    num_samples: Union[int, torch.Tensor]
    start: Union[int, torch.Tensor] = 0


def model_device(model, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return fallback


def _channels_last_dest(shape) -> torch.Tensor:
    """Position of each NCHW-flat element inside an NHWC row."""
    c, h, w = shape
    return torch.arange(h * w * c).reshape(h, w, c).permute(2, 0, 1).reshape(-1)


def resolve_votes_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """'auto' -> numba on the CPU (float32/64 logits), triton on CUDA (float logits), torch
    otherwise."""
    if backend not in VOTES_BACKENDS:
        raise ValueError(f"votes backend must be one of {VOTES_BACKENDS}, got {backend!r}")
    numba_ok = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    triton_ok = dtype.is_floating_point and triton_available(device)
    if backend == "auto":
        if numba_ok:
            return "numba"
        return "triton" if device.type == "cuda" and triton_ok else "torch"
    if backend == "numba" and not numba_ok:
        raise ValueError("numba vote counting needs float32/float64 logits on the CPU")
    if backend == "triton" and not triton_ok:
        raise ValueError("triton vote counting needs floating-point logits on a CUDA device "
                         "and the triton package (or TRITON_INTERPRET=1 on the CPU, for tests)")
    return backend


def add_votes(counts: torch.Tensor, bad: torch.Tensor, logits: torch.Tensor, seg: torch.Tensor,
              backend: str) -> None:
    """counts[seg[r], argmax(logits[r])] += 1 for each row; bad += rows with a non-finite
    logit. ``backend`` is resolved (``resolve_votes_backend``); all backends agree exactly."""
    if backend == "numba":
        from .kernels.votes_numba import votes_into
    elif backend == "triton":
        from .kernels.votes_triton import votes_into
    else:
        from .kernels.votes_torch import votes_into
    votes_into(counts, bad, logits, seg)


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Opt-in, process-wide CPU speed-up for conv nets: let glibc's malloc serve large blocks
    (a batch's activations) from its heap and keep freed memory for reuse, instead of an
    mmap / munmap per tensor whose page faults (the kernel zeroing fresh pages) cost a third
    of a small CNN's CPU time at batch_size 1000 here (``bench/RESULTS.md``: certify
    1.5-1.8x faster for the small CNN and ResNet-20). Equivalent to starting Python with
    ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647``; the price is
    that memory the process frees is kept rather than returned to the OS. The engine applies it
    once per process on its first CPU run (``tune_cpu_allocator_once``). Returns False (doing
    nothing) where glibc's ``mallopt`` is missing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(
        mallopt(m_trim_threshold, int(trim_threshold)))


#: set DUALRS_FAST_TUNE_MALLOC=0 to keep glibc's default allocator in processes that sample
TUNE_MALLOC_ENV = "DUALRS_FAST_TUNE_MALLOC"
_ALLOCATOR_TUNED = []  # [result] once tune_cpu_allocator_once has run in this process


def tune_cpu_allocator_once() -> bool:
    """``tune_cpu_allocator()`` the first time it is called in a process, unless the process
    set glibc's thresholds itself (MALLOC_MMAP_THRESHOLD_) or opted out with
    DUALRS_FAST_TUNE_MALLOC=0. Process-wide side effect: large freed blocks stay with the
    process for reuse (its resident memory does not shrink after a certify call)."""
    if not _ALLOCATOR_TUNED:
        wanted = (os.environ.get(TUNE_MALLOC_ENV, "1") != "0"
                  and "MALLOC_MMAP_THRESHOLD_" not in os.environ)
        _ALLOCATOR_TUNED.append(tune_cpu_allocator() if wanted else False)
    return _ALLOCATOR_TUNED[0]


def use_channels_last_weights(model) -> None:
    """Store the 4-D weights of ``model``'s convolutions channels_last, in place (the values,
    and the Parameter objects an optimizer holds, stay the same). Convolutions take the
    faster NHWC path when their input or their weight is channels_last, and a leading
    normalisation layer can hand the first convolution NCHW strides (Cohen et al.'s
    NormalizeLayer does for 1-channel images), so the batch's layout alone does not
    survive there."""
    if not isinstance(model, torch.nn.Module):
        return
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.modules.conv._ConvNd) and isinstance(weight, torch.Tensor)
                and weight.dim() == 4
                and not weight.is_contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)


#: CPU forward passes of fewer rows run on one torch thread: their per-operation thread
#: hand-offs cost more than the work they split (an 8-row ResNet-20 pass took 5 s on 2
#: threads and 0.08 s on one on a busy 2-core machine; a 100-row pass 2.1 s and 0.4-0.6 s;
#: 1000 rows the same either way there; docs/cohen.md)
SMALL_BATCH_ROWS = 256


@contextlib.contextmanager
def threads_for_rows(rows: int, device: torch.device):
    """One torch thread for a CPU forward pass of fewer than SMALL_BATCH_ROWS rows, restored
    after it (torch's thread count is process-wide: other Python threads running torch at
    that moment share the setting)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or rows >= SMALL_BATCH_ROWS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: row maps are computed for this many batches at once: a handful of small tensor ops per
#: group instead of per batch (~2% of a tiny MLP's certify time at batch_size 1000)
MAP_BATCHES = 32


def _row_maps(total: int, rows_per_batch: int, seg_end, seg_start, seg_first_j, seg_stream,
              batch: int):
    """For each batch of rows: (segment, input, stream, sample index j) of every row, where
    segment s = (draw, input) owns rows [seg_end[s] - n_s, seg_end[s])."""
    group = rows_per_batch * MAP_BATCHES
    for group_start in range(0, total, group):
        rows = torch.arange(group_start, min(total, group_start + group), device=seg_end.device)
        seg = torch.searchsorted(seg_end, rows, right=True)
        row_j = rows - seg_start[seg] + seg_first_j[seg]
        row_input, row_stream = seg % batch, seg_stream[seg]
        for lo in range(0, rows.shape[0], rows_per_batch):
            hi = lo + rows_per_batch
            yield seg[lo:hi], row_input[lo:hi], row_stream[lo:hi], row_j[lo:hi]


_COMPILED = {}


def _compiled(model):
    key = id(model)
    if key not in _COMPILED:
        _COMPILED[key] = (model, torch.compile(model, dynamic=False))
    return _COMPILED[key][1]


def _model_input(rows: torch.Tensor, x_shape, use_cl: bool) -> torch.Tensor:
    """View flat noisy rows (m, D) as the model's batch: (m, C, H, W) channels_last, or x's
    shape."""
    if use_cl:
        c, h, w = x_shape[1:]
        return rows.view(-1, h, w, c).permute(0, 3, 1, 2)
    return rows.view((-1,) + tuple(x_shape[1:]))


def _folded_agrees(folded, reference: torch.Tensor, run, device) -> bool:
    """The folded copy gives the model's probe logits up to the batch probe's tolerance
    (a trace that changed the function, or fails, leaves the model as it is)."""
    try:
        with threads_for_rows(PROBE_ROWS, device):
            logits = run(folded)
    except Exception:  # noqa: BLE001 - any failure of the copy: the model runs as given
        return False
    return agrees_on(reference, logits, rtol(reference.dtype))


def count_votes(model, x: torch.Tensor, sigma: torch.Tensor, draws: Sequence[Draw], *, seed: int,
                ids: torch.Tensor, batch_size: int, num_classes=None, channels_last=None,
                compile: bool = False, noise_backend: str = "auto",
                progress: Optional[bool] = False, pass_sigma: bool = False, desc: str = "sampling",
                votes_backend: str = "auto", fold_bn: Optional[bool] = None) -> torch.Tensor:
    """Votes of ``model`` on x[i] + sigma[i] * noise -> int64 counts (len(draws), B, K).

    x: (B, ...) validated batch; sigma: (B,) per-input noise levels; ids: (B,) noise keys.
    pass_sigma: call ``model(noisy, sigma_rows)`` (noise-conditioned models, denoisers) with
    each row's noise level, a float32 tensor (rows,).
    channels_last: feed (B, C, H, W) batches in channels_last layout and store the
    convolution weights channels_last, in place (``use_channels_last_weights``: the folded
    copy's where ``fold_bn`` applies, else the model's own; default: on
    for 4-D inputs, including C = 1); the counts do not depend on it beyond float rounding in
    the model. On the CPU the first call tunes glibc's allocator for the whole process
    (``tune_cpu_allocator_once``; opt out with DUALRS_FAST_TUNE_MALLOC=0).
    noise_backend / votes_backend: 'auto' (numba-simd / numba on the CPU, triton on CUDA) or a
    name from ``noise.BACKENDS`` / ``VOTES_BACKENDS`` (e.g. noise_backend='numba', the libm
    kernel, equal to 'numba-simd' up to float rounding).
    fold_bn: on the CPU without ``compile``, run the batches through a private copy of the
    model with eval-mode BatchNorm folded into the preceding convolutions (``fold.py``; the
    model itself is not modified), once its logits on the probe rows match the model's to
    the batch probe's tolerance. Default (None): on, unless DUALRS_FAST_FOLD_BN=0.

    Refused before any sampling: a model in training mode, parameters of another dtype than
    x, sigma within MIN_SIGMA_STEPS float steps of an input's magnitude, more than 2**32
    samples of one stream per input, and a model whose rows depend on each other within a
    batch (``batch_probe``).
    progress: True, False or None (a bar with ETA on a terminal once the call runs 5 s);
    off a terminal at most three lines (``progress.progress_bar``).
    """
    head = Head(model, sigma, pass_sigma=pass_sigma, num_classes=num_classes)
    return _count_heads([head], x, draws, seed=seed, ids=ids, batch_size=batch_size,
                        channels_last=channels_last, compile=compile,
                        noise_backend=noise_backend, progress=progress, desc=desc,
                        votes_backend=votes_backend, fold_bn=fold_bn)[0]


@dataclass(frozen=True)
class Head:
    """A model whose votes ``count_votes_shared_noise`` counts, at its own noise levels sigma
    (B,), with ``count_votes``' pass_sigma and num_classes."""
    model: Callable
    sigma: torch.Tensor
    pass_sigma: bool = False
    num_classes: Optional[int] = None


def count_votes_shared_noise(heads: Sequence[Head], x: torch.Tensor, draws: Sequence[Draw], *,
                             seed: int, ids: torch.Tensor, batch_size: int, **options) -> list:
    """``count_votes`` for two models on one draw of the noise: row (i, stream, j) feeds head
    h x[i] + heads[h].sigma[i] * z with the same z, written by the fused pair kernel
    (``noise.fill_noisy_row_pairs``). Head h's counts (len(draws), B, K_h) equal
    ``count_votes(heads[h].model, x, heads[h].sigma, draws, ...)``'s: the same counters give
    the same noise. The two counts are dependent (``dualrs_fast.shared_noise``). Options as
    ``count_votes``; both models on one device."""
    if len(heads) != 2:
        raise ValueError(f"shared noise feeds two models, got {len(heads)}")
    return _count_heads(heads, x, draws, seed=seed, ids=ids, batch_size=batch_size, **options)


def _count_heads(heads: Sequence[Head], x: torch.Tensor, draws: Sequence[Draw], *, seed: int,
                 ids: torch.Tensor, batch_size: int, channels_last=None, compile: bool = False,
                 noise_backend: str = "auto", progress: Optional[bool] = False,
                 desc: str = "sampling", votes_backend: str = "auto",
                 fold_bn: Optional[bool] = None) -> list:
    """The engine behind ``count_votes`` (one head) and ``count_votes_shared_noise`` (two
    heads on one draw of z) -> one counts tensor per head."""
    for head in heads:
        check_model_callable(head.model)
        check_model_is_deterministic(head.model)
        check_model_input_dtype(head.model, x.dtype)
    batch = x.shape[0]
    device = model_device(heads[0].model, x.device)
    if any(model_device(head.model, x.device) != device for head in heads):
        raise ValueError("models fed from one draw of the noise must be on one device")
    backend = resolve_backend(noise_backend, device)
    gen_device = torch.device("cpu") if backend.startswith("numba") else device
    x_flat = x.detach().reshape(batch, -1).to(gen_device).contiguous()
    # float64 like the noise: sigma rounded to a float32 input's dtype could fall below the
    # sigma the radius is computed with
    sigmas = [head.sigma.to(device=gen_device, dtype=torch.float64).contiguous()
              for head in heads]
    ids = ids.to(gen_device).contiguous()
    dim = x_flat.shape[1]
    for sigma in sigmas:
        check_sigma_resolution(x_flat, sigma)

    # One segment per (draw, input): its samples occupy a contiguous range of rows.
    def per_segment(values):  # an int or one value per input, for each draw -> (draws * B,)
        return torch.stack([torch.as_tensor(v, dtype=torch.int64).expand(batch)
                            for v in values]).reshape(-1)

    per_input = per_segment(d.num_samples for d in draws)
    first_j = per_segment(d.start for d in draws)
    if int((first_j + per_input).max()) > MAX_SAMPLES + 1 or int(first_j.min()) < 0:
        raise ValueError("sample indices must lie in [0, 2**32) (32-bit noise counter): at most "
                         f"{MAX_SAMPLES} samples of one stream per input")
    seg_end = torch.cumsum(per_input, 0)
    total = int(seg_end[-1])
    if total == 0:  # nothing to draw: the models are never called
        if any(head.num_classes is None for head in heads):
            raise ValueError("count_votes with no samples needs num_classes")
        return [torch.zeros((len(draws), batch, int(head.num_classes)), dtype=torch.int64,
                            device=device) for head in heads]
    seg_start = (seg_end - per_input).to(gen_device)
    seg_first_j = first_j.to(gen_device)
    seg_stream = torch.tensor([int(d.stream) for d in draws]).repeat_interleave(batch)
    seg_stream = seg_stream.to(gen_device)
    seg_end = seg_end.to(gen_device)

    use_cl = (x.dim() == 4) if channels_last is None else bool(channels_last)
    if use_cl and x.dim() != 4:
        raise ValueError("channels_last needs (B, C, H, W) inputs")
    fold = device.type == "cpu" and not compile and fold_wanted(fold_bn)
    folded = [folded_copy(head.model) if fold else None for head in heads]
    if use_cl:  # the model's own weights only where it runs the batches itself
        for head, copy in zip(heads, folded):
            use_channels_last_weights(head.model if copy is None else copy)
    if device.type == "cpu":
        tune_cpu_allocator_once()
    cl_shape = tuple(x.shape[1:]) if use_cl and x.shape[1] > 1 else None
    dest = _channels_last_dest(cl_shape).to(gen_device) if cl_shape is not None else None
    rows_per_batch = min(batch_size, total) if not compile else batch_size
    bufs = [torch.zeros(rows_per_batch, dim, dtype=x_flat.dtype, device=gen_device)
            for _ in heads]
    forwards = [_compiled(head.model) if compile else head.model for head in heads]
    sigmas_dev = [sigma.to(device=device, dtype=torch.float32) for sigma in sigmas]

    def call(h, model_fn, noisy, row_input):
        if heads[h].pass_sigma:
            sigma_rows = sigmas_dev[h][row_input.to(device)]
            if noisy.shape[0] > sigma_rows.shape[0]:  # compile padding
                pad = noisy.shape[0] - sigma_rows.shape[0]
                sigma_rows = torch.cat([sigma_rows, sigma_rows[-1:].expand(pad)])
            return model_fn(noisy, sigma_rows)
        return model_fn(noisy)

    def fill(outs, row_input, row_stream, row_j):
        """Noisy rows of every head from one draw of z (the pair kernel for two heads)."""
        if len(outs) == 1:
            fill_noisy_rows(outs[0], x_flat, sigmas[0], ids, seed, row_input, row_stream, row_j,
                            dest, backend, channels_last_shape=cl_shape)
        else:
            fill_noisy_row_pairs(*outs, x_flat, *sigmas, ids, seed, row_input, row_stream,
                                 row_j, dest, backend, channels_last_shape=cl_shape)

    # The batch probe: PROBE_ROWS samples of the first draw's stream, cycling over the inputs,
    # through the plain (never the compiled: its shape is static) model.
    probe_input = torch.arange(PROBE_ROWS, device=gen_device) % batch
    probe_j = torch.arange(PROBE_ROWS, device=gen_device) // batch
    probes = [torch.empty(PROBE_ROWS, dim, dtype=x_flat.dtype, device=gen_device) for _ in heads]
    fill(probes, probe_input, torch.full_like(probe_input, int(draws[0].stream)), probe_j)
    probes = [_model_input(probe, x.shape, use_cl).to(device) for probe in probes]

    def probe_call(h, rows: slice) -> torch.Tensor:
        try:
            with threads_for_rows(PROBE_ROWS, device):
                logits = call(h, heads[h].model, probes[h][rows], probe_input[rows])
        except (RuntimeError, ValueError) as exc:  # the model's first call: how x was read
            if x.dim() != 2:
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"the model failed on x of shape {tuple(x.shape)}, read as a batch of "
                f"{x.shape[0]} inputs of shape ({x.shape[1]},): for one image (H, W) pass "
                f"x[None] (1, H, W), for a batch of them x[:, None] (B, 1, H, W). "
                f"The model said: {reason}") from exc
        check_logits(logits, probes[h][rows].shape[0], heads[h].num_classes)
        if rows == slice(0, PROBE_ROWS):
            probe_logits[h] = logits
        return logits

    num_classes = [head.num_classes for head in heads]
    counts, bad, votes = [None] * len(heads), [None] * len(heads), [None] * len(heads)
    probe_logits = [None] * len(heads)
    # no_grad, not inference_mode: a model may use autograd inside forward (as it can under
    # Cohen et al.'s no_grad)
    with torch.no_grad():
        for h in range(len(heads)):
            check_batch_independent(functools.partial(probe_call, h))
            if folded[h] is None:
                continue
            if _folded_agrees(folded[h], probe_logits[h],
                              lambda m, h=h: call(h, m, probes[h], probe_input), device):
                forwards[h] = folded[h]
            elif use_cl:
                use_channels_last_weights(heads[h].model)
    with torch.no_grad(), progress_bar(total, desc, "samples", progress,
                                              unit_scale=True) as bar:
        for seg, row_input, row_stream, row_j in _row_maps(total, rows_per_batch, seg_end,
                                                           seg_start, seg_first_j, seg_stream,
                                                           batch):
            m = seg.shape[0]
            fill([buf[:m] for buf in bufs], row_input, row_stream, row_j)
            for h, buf in enumerate(bufs):
                # compile: keep one static shape; the tail rows of a short last batch are ignored.
                noisy = _model_input(buf if compile else buf[:m], x.shape, use_cl)
                with threads_for_rows(noisy.shape[0], device):
                    logits = call(h, forwards[h], noisy.to(device, non_blocking=True), row_input)
                num_classes[h] = check_logits(logits, noisy.shape[0], num_classes[h])
                logits = logits[:m]
                if counts[h] is None:  # counts live where the logits are
                    counts[h] = torch.zeros(len(draws) * batch, num_classes[h], dtype=torch.int64,
                                            device=logits.device)
                    bad[h] = torch.zeros(1, dtype=torch.int64, device=logits.device)
                    votes[h] = resolve_votes_backend(votes_backend, logits.device, logits.dtype)
                add_votes(counts[h], bad[h], logits, seg.to(logits.device), votes[h])
            bar.update(m)
    if any(int(b) > 0 for b in bad):  # checked once at the end: no sync per batch
        raise ValueError("model returned NaN or inf logits on noisy inputs; no certificate")
    return [c.view(len(draws), batch, k) for c, k in zip(counts, num_classes)]
