"""Plain-PyTorch reference of vote counting: argmax of each row's logits, added to the
histogram of the row's segment (one segment per (draw, input) of a packed batch).

    counts[seg[r], argmax(logits[r])] += 1      for every row r
    bad += number of rows with a NaN or infinite logit

argmax follows ``torch.argmax``: the first maximal index, NaN counting as the maximum. Every
other backend (``votes_numba``, ``votes_triton``) must give identical counts.
"""
import torch


def votes_into(counts: torch.Tensor, bad: torch.Tensor, logits: torch.Tensor,
               seg: torch.Tensor) -> None:
    """counts: int64 (S, K), bad: int64 (1,), logits: (m, K), seg: int64 (m,) in [0, S)."""
    k = logits.shape[1]
    slot = seg * k + logits.argmax(1)
    counts.view(-1).index_add_(0, slot, torch.ones_like(slot))
    bad += (~torch.isfinite(logits)).any(1).sum()
