"""Refuse a model whose output for one row depends on the other rows of its batch.

The engine packs many inputs' noisy samples into each batch. A model that couples the rows
of a batch (BatchNorm computing batch statistics, e.g. ``track_running_stats=False``, a
TorchScript module left in training mode, ...) votes differently there than on one input
alone: its certificate would describe no fixed classifier. Before sampling, ``PROBE_ROWS``
noisy rows go through the model as one batch and again as two halves, and each row's logits
must agree up to float rounding.

Why a tolerance rather than exact equality: CPU convolutions (oneDNN, channels_last) pick
kernels by batch size, so a well-behaved model's logits can differ in the last bits between
a batch of 8 and one of 4. Batch statistics move logits by a sizeable fraction of their
scale. The tolerance, ``rtol(dtype)`` times the row's largest |logit|, can only hide a vote
change on a row whose top two logits are within twice that of each other: a tie up to float
rounding, where the vote already depends on rounding inside the model.

A probe cannot prove independence (an adversarial model could couple rows only in batches it
does not see here); it catches the accidental cases, at the cost of 16 extra rows per call.
"""
from typing import Callable

import torch

PROBE_ROWS = 8
#: float32 logits: ~840 ulps of the row's scale; far below what batch statistics change
RTOL_FLOAT32 = 1e-4


def rtol(dtype: torch.dtype) -> float:
    """Relative tolerance for logits of ``dtype``: RTOL_FLOAT32, or 4 ulps of a coarser type
    (float16 / bfloat16 logits round a float32 difference to a whole ulp)."""
    return max(RTOL_FLOAT32, 4 * torch.finfo(dtype).eps)


def check_batch_independent(call: Callable[[slice], torch.Tensor]) -> None:
    """``call(rows)`` returns the model's logits (m, K) for a slice of the PROBE_ROWS probe
    rows, fed to the model as one batch. Raises ValueError if the whole batch and its two
    halves disagree beyond float rounding."""
    half = PROBE_ROWS // 2
    whole = call(slice(0, PROBE_ROWS))
    parts = torch.cat([call(slice(0, half)), call(slice(half, PROBE_ROWS))])
    a, b = whole.double(), parts.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("model returned NaN or inf logits on noisy inputs; no certificate")
    scale = torch.maximum(a.abs().amax(1), b.abs().amax(1))
    diff = (a - b).abs().amax(1)
    worst = int(torch.argmax(diff / scale.clamp_min(torch.finfo(torch.float64).tiny)))
    if diff[worst] > rtol(whole.dtype) * scale[worst]:
        raise ValueError(
            f"the model's output for a row depends on the other rows of its batch (logits "
            f"moved by {float(diff[worst]):.3g} of {float(scale[worst]):.3g} between a batch of "
            f"{PROBE_ROWS} and batches of {half}): BatchNorm with batch statistics, or a module "
            "in training mode or random? No certificate")
