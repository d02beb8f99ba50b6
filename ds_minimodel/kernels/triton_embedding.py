"""Embedding backward in Triton: d W[v] = sum of the output gradients of the tokens with id v.

In adaptation the word embeddings are the only trained matrix, and this scatter-add is their
whole backward. Two variants, both accumulating in fp32 whatever the gradient dtype:

* deterministic (the default): the ids are stable-sorted on the host, giving for each distinct
  id a contiguous segment of token positions in their original order; one program per
  (segment, column block) sums its segment in that fixed order and writes the row once. Same
  bits on every run, no fp32 [V, d] scratch for bf16 weights (each row is rounded once), and
  only the rows that occur are touched besides the zero fill.
* atomic: one program per (block of tokens, column block) atomically adds its rows into an
  fp32 [V, d] buffer. No sort, but the order of the adds (hence the last bits) varies between
  runs, and a very frequent id (padding, punctuation) makes its programs contend.

Tokens equal to `padding_idx` contribute nothing (nn.Embedding's padding_idx contract; HF
RoBERTa / XLM-R use row 1).
"""

import torch
import triton
import triton.language as tl

BLOCK_D = 128  # columns per program: 768 = 6 blocks; loads are 128-wide vectors
BLOCK_N = 32  # token rows summed per step (deterministic) or per program (atomic)


@triton.jit
def _segment_sum_kernel(G, PERM, OFFSETS, SEG_IDS, OUT, D, stride_g, PAD, ACC: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    seg = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    start = tl.load(OFFSETS + seg)
    stop = tl.load(OFFSETS + seg + 1)
    row = tl.load(SEG_IDS + seg).to(tl.int64)
    acc = tl.zeros((BLOCK_D,), ACC)
    # Fixed order (segment order, then a fixed-shape tree sum per BLOCK_N rows): deterministic.
    for i in range(start, stop, BLOCK_N):
        idx = i + tl.arange(0, BLOCK_N)
        ok = idx < stop
        tok = tl.load(PERM + idx, mask=ok, other=0).to(tl.int64)
        g = tl.load(G + tok[:, None] * stride_g + cols[None, :], mask=ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc += tl.sum(g.to(ACC), axis=0)
    if row != PAD:  # the padding row keeps its zeros
        tl.store(OUT + row * D + cols, acc.to(OUT.dtype.element_ty), mask=col_ok)


@triton.jit
def _atomic_kernel(G, IDS, OUT, N, D, stride_g, PAD,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    toks = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tok_ok = toks < N
    col_ok = cols < D
    ids = tl.load(IDS + toks, mask=tok_ok, other=0).to(tl.int64)
    ok = (tok_ok & (ids != PAD))[:, None] & col_ok[None, :]
    g = tl.load(G + toks.to(tl.int64)[:, None] * stride_g + cols[None, :], mask=ok, other=0.0)
    tl.atomic_add(OUT + ids[:, None] * D + cols[None, :], g.to(OUT.dtype.element_ty), mask=ok)


def _flat(grad_output, input_ids):
    d = grad_output.shape[-1]
    return grad_output.reshape(-1, d).contiguous(), input_ids.reshape(-1).contiguous(), d


def sorted_segments(ids):
    """(token positions sorted by id, stably; segment offsets [U + 1]; the U distinct ids)."""
    sorted_ids, perm = torch.sort(ids, stable=True)
    seg_ids, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    offsets = torch.zeros(seg_ids.numel() + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return perm, offsets, seg_ids


def embedding_backward_deterministic(grad_output, input_ids, num_embeddings, padding_idx=None,
                                     block_n=BLOCK_N, block_d=BLOCK_D):
    g, ids, d = _flat(grad_output, input_ids)
    out = torch.zeros(num_embeddings, d, dtype=grad_output.dtype, device=g.device)
    if ids.numel() == 0:
        return out
    perm, offsets, seg_ids = sorted_segments(ids)
    grid = (seg_ids.numel(), triton.cdiv(d, block_d))
    _segment_sum_kernel[grid](
        g, perm, offsets, seg_ids, out, d, g.stride(0), -1 if padding_idx is None else padding_idx,
        ACC=tl.float64 if g.dtype == torch.float64 else tl.float32, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    return out


def embedding_backward_atomic(grad_output, input_ids, num_embeddings, padding_idx=None,
                              block_n=BLOCK_N, block_d=BLOCK_D):
    g, ids, d = _flat(grad_output, input_ids)
    # The fp32 (fp64 for fp64) accumulator; for fp32 gradients it is the result itself.
    acc = torch.zeros(num_embeddings, d, dtype=torch.promote_types(g.dtype, torch.float32),
                      device=g.device)
    if ids.numel() == 0:
        return acc.to(grad_output.dtype)
    grid = (triton.cdiv(ids.numel(), block_n), triton.cdiv(d, block_d))
    _atomic_kernel[grid](
        g, ids, acc, ids.numel(), d, g.stride(0), -1 if padding_idx is None else padding_idx,
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    return acc.to(grad_output.dtype)
