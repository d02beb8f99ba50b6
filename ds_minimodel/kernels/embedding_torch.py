"""Embedding backward in plain PyTorch, with fp32 accumulation and a chosen determinism.

Measured on this project's CPU machine (2 cores, d=768, V=250,002, 16k tokens, fp32; see
tests/test_kernels.py::test_embedding_torch_paths_agree for the equality, the numbers are in the
kernels README section of the report): `index_add_` into the gradient is faster than a
sort + segment-sum (the sort and the gather of the sorted rows cost more than they save), and on
CPU it is already deterministic (ATen's CPU index_add_ walks the indices in order). So on CPU
the "torch" path uses index_add_. On CUDA, index_add_ is an atomic scatter (non-deterministic),
so there the "torch" path uses the sort + segment-sum (deterministic, like the Triton default).

Both accumulate in fp32 for bf16/fp16 gradients, but only over the rows that occur ([U, d]
scratch, U = distinct ids, instead of an fp32 copy of the whole [V, d] matrix), and round once.
"""

import torch


def _flat(grad_output, input_ids):
    d = grad_output.shape[-1]
    return grad_output.reshape(-1, d), input_ids.reshape(-1), d


def embedding_backward_index_add(grad_output, input_ids, num_embeddings, padding_idx=None):
    g, ids, d = _flat(grad_output, input_ids)
    if g.dtype in (torch.float32, torch.float64):
        out = torch.zeros(num_embeddings, d, dtype=g.dtype, device=g.device)
        out.index_add_(0, ids, g)
    else:
        # Accumulate only the rows that occur in fp32, then round each once.
        uniq, inverse = torch.unique(ids, return_inverse=True)
        acc = torch.zeros(uniq.numel(), d, dtype=torch.float32, device=g.device)
        acc.index_add_(0, inverse, g.float())
        out = torch.zeros(num_embeddings, d, dtype=g.dtype, device=g.device)
        out.index_copy_(0, uniq, acc.to(g.dtype))
    if padding_idx is not None:
        out[padding_idx] = 0
    return out


def embedding_backward_sorted(grad_output, input_ids, num_embeddings, padding_idx=None):
    """Stable sort by id, then a segment sum per distinct id: deterministic on every device."""
    g, ids, d = _flat(grad_output, input_ids)
    acc_dtype = torch.promote_types(g.dtype, torch.float32)
    out = torch.zeros(num_embeddings, d, dtype=g.dtype, device=g.device)
    if ids.numel() == 0:
        return out
    sorted_ids, perm = torch.sort(ids, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    # segment_reduce sums each run of `counts` consecutive rows in order (no atomics).
    sums = torch.segment_reduce(g.index_select(0, perm).to(acc_dtype), "sum", lengths=counts,
                                axis=0, unsafe=True)
    out.index_copy_(0, uniq, sums.to(g.dtype))
    if padding_idx is not None:
        out[padding_idx] = 0
    return out


def embedding_backward_torch(grad_output, input_ids, num_embeddings, padding_idx=None):
    """The "torch" embedding backward: index_add_ on CPU, sort + segment-sum on CUDA."""
    if grad_output.is_cuda:
        return embedding_backward_sorted(grad_output, input_ids, num_embeddings, padding_idx)
    return embedding_backward_index_add(grad_output, input_ids, num_embeddings, padding_idx)


def embedding_rows_add_(out, grad_output, input_ids, padding_idx=None):
    """Add the lookup's gradient rows into an existing [V, d] gradient `out` (the MLM heads' d W,
    `tied_grad.py`) in place, and return it: the same rows `embedding_backward_torch` would write
    into a zero table, with no zero table. The padding row gets nothing from the lookup (its
    head gradient stays). Deterministic: on CPU index_add_ walks the ids in order; on CUDA the
    rows are first summed per distinct id (sort + segment sum), then added once per row."""
    g, ids, d = _flat(grad_output, input_ids)
    if padding_idx is not None:
        keep = ids.ne(padding_idx)
        g, ids = g[keep], ids[keep]
    if ids.numel() == 0:
        return out
    if out.dtype in (torch.float32, torch.float64) and g.dtype == out.dtype and not g.is_cuda:
        return out.index_add_(0, ids, g)
    acc_dtype = torch.promote_types(g.dtype, torch.float32)
    if g.is_cuda:
        sorted_ids, perm = torch.sort(ids, stable=True)
        uniq, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        sums = torch.segment_reduce(g.index_select(0, perm).to(acc_dtype), "sum", lengths=counts, axis=0, unsafe=True)
    else:
        uniq, inverse = torch.unique(ids, return_inverse=True)
        sums = torch.zeros(uniq.numel(), d, dtype=acc_dtype, device=g.device).index_add_(0, inverse, g.to(acc_dtype))
    # Each row once, added in fp32 and rounded once (bf16 tables).
    out.index_copy_(0, uniq, (out.index_select(0, uniq).to(acc_dtype) + sums).to(out.dtype))
    return out
