"""Fused vote counting on the CPU (numba): argmax + per-segment histogram + non-finite check
in one pass over the logits. Same semantics as ``votes_torch.py`` (the reference): first
maximal index, NaN counting as the maximum, so counts are identical.
"""
import math

import numba
import torch

SUPPORTED = (torch.float32, torch.float64)


@numba.njit(nogil=True, cache=True)
def _votes_kernel(logits, seg, counts):
    m, k = logits.shape
    bad = 0
    for r in range(m):
        best = 0
        v = logits[r, 0]
        row_bad = not math.isfinite(v)
        for c in range(1, k):
            w = logits[r, c]
            if not math.isfinite(w):
                row_bad = True
            # w > v, or the first NaN (torch.argmax treats NaN as the maximum)
            if w > v or (w != w and v == v):
                best = c
                v = w
        counts[seg[r], best] += 1
        if row_bad:
            bad += 1
    return bad


def votes_into(counts: torch.Tensor, bad: torch.Tensor, logits: torch.Tensor,
               seg: torch.Tensor) -> None:
    """counts: int64 (S, K), bad: int64 (1,), logits: float32/float64 (m, K), seg: int64 (m,);
    all on the CPU. Strided logits are fine (numba reads any layout)."""
    if logits.dtype not in SUPPORTED:
        raise TypeError(f"numba vote counting supports {SUPPORTED}, got {logits.dtype}")
    if logits.shape[0] == 0:
        return
    n_bad = _votes_kernel(logits.detach().numpy(), seg.numpy(), counts.numpy())
    bad += n_bad
