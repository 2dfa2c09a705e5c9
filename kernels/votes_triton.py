"""Fused vote counting on the GPU (Triton): argmax of each row's logits + per-segment
histogram (atomic adds) + non-finite check, in one kernel and without a host sync.
Same semantics as ``votes_torch.py`` (the reference): first maximal index, NaN counting as
the maximum (the first NaN of a row wins), so counts are identical.

Importing this module applies ``@triton.jit``; set ``TRITON_INTERPRET=1`` *before* the first
import to run it on the CPU (tests).
"""
import torch
import triton
import triton.language as tl

MAX_BLOCK = 8192  # logits per program: BLOCK_M rows x BLOCK_K (next power of 2 >= K) columns


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _argmax_combine(v1, i1, v2, i2):
    """Keep the larger (value, -index): NaN above every number, ties to the lower index."""
    nan1 = v1 != v1
    nan2 = v2 != v2
    lower = i2 < i1
    take2 = (nan2 & (~nan1 | lower)) | (~nan1 & ~nan2 & ((v2 > v1) | ((v2 == v1) & lower)))
    return tl.where(take2, v2, v1), tl.where(take2, i2, i1)


# Reductions use tl.reduce with the combine functions above rather than tl.argmax / tl.sum,
# which are @jit functions of triton itself: those are interpreted only if triton was
# imported after TRITON_INTERPRET=1 was set, ours whenever this module is.
@triton.jit
def _votes_kernel(logits_ptr, seg_ptr, counts_ptr, bad_ptr, m, k, row_stride, col_stride,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < m
    mask = row_ok[:, None] & (cols[None, :] < k)
    v = tl.load(logits_ptr + rows[:, None] * row_stride + cols[None, :] * col_stride, mask=mask,
                other=float("-inf"))
    idx = tl.full([BLOCK_M, BLOCK_K], 0, tl.int32) + cols[None, :]
    _, best = tl.reduce((v, idx), 1, _argmax_combine)
    non_finite = mask & ((v != v) | (tl.abs(v) == float("inf")))
    row_bad = tl.reduce(non_finite.to(tl.int32), 1, _add) > 0
    seg = tl.load(seg_ptr + rows, mask=row_ok, other=0)
    tl.atomic_add(counts_ptr + seg * k + best.to(tl.int64), tl.full([BLOCK_M], 1, tl.int64),
                  mask=row_ok)
    tl.atomic_add(bad_ptr, tl.reduce((row_bad & row_ok).to(tl.int64), 0, _add))


def votes_into(counts: torch.Tensor, bad: torch.Tensor, logits: torch.Tensor,
               seg: torch.Tensor) -> None:
    """counts: int64 (S, K) contiguous, bad: int64 (1,), logits: (m, K), seg: int64 (m,);
    all on one device (CUDA; CPU under TRITON_INTERPRET=1)."""
    m, k = logits.shape
    if m == 0:
        return
    if logits.dtype == torch.bfloat16:
        # exact in float32 (ties stay ties); Triton's interpreter misreads bfloat16 loads
        # (every row voted class 0), so no bfloat16 load is trusted here
        logits = logits.float()
    if not counts.is_contiguous():
        raise ValueError("counts must be contiguous")
    block_k = triton.next_power_of_2(k)
    block_m = max(1, min(64, MAX_BLOCK // block_k))
    _votes_kernel[(triton.cdiv(m, block_m),)](logits, seg, counts, bad, m, k, logits.stride(0),
                                              logits.stride(1), BLOCK_M=block_m,
                                              BLOCK_K=block_k)
