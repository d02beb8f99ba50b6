"""autograd.Functions around the fused kernels; `kernels/__init__.py` picks one per call.

ZeRO-3 contract: the tied weight is saved with `ctx.save_for_backward` (never copied, never
stored on `ctx` as an attribute), so backward reads whatever the parameter holds when DeepSpeed
has re-gathered it for the head module's backward, and autograd drops the reference when
backward ends. Saving `weight.data`, a `.float()` copy, or `ctx.weight = weight` would either
pin a stale full copy or keep the gathered tensor alive as long as the graph. (The "rows"
strategy reads the weight in forward only and keeps its gradients instead; the embedding saves
only the ids.)
"""

import torch
from torch.autograd.function import once_differentiable

from ds_minimodel.kernels import chunked
from ds_minimodel.kernels.embedding_torch import embedding_backward_torch, embedding_rows_add_


def _handed_over(tied, d_weight):
    """A head's d W: into the shared buffer (`tied_grad.py`; the lookup returns it) or returned."""
    if tied is None or d_weight is None:
        return d_weight
    tied.add(d_weight)
    return None


def _grad_scale(grad_output, num_rows, dtype):
    # d loss / d (per-row loss) for the mean over rows; kept a tensor (no host sync on CUDA).
    # With no rows nothing reads it: divide by 1, not 0.
    return grad_output.detach().to(dtype) / max(num_rows, 1)


class ChunkedMaskedLMLoss(torch.autograd.Function):
    """Mean cross-entropy of h W^T + b in plain PyTorch (see `chunked.py`).

    rows None: the "vocab" strategy (lse now, gradients in backward by recomputing the logits
    chunk by chunk). rows an int: the "rows" strategy (gradients computed here, in forward, for
    grad_output = 1, kept, and rescaled in backward). Its caller passes rows only when a
    backward will follow (grad mode on, an input requiring grad). A second backward through the
    same forward (retain_graph, gradcheck) has no kept gradients left: it recomputes, as "vocab".
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk, rows, tied):
        ctx.chunk, ctx.eager = chunk, rows is not None
        ctx.tied = tied if tied is not None and tied.accepts(weight) else None
        if ctx.eager:
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            lse, target, dh, dw, db = chunked.head_rows_eager(
                hidden, weight, bias, labels, rows, chunk, need_h, need_w, need_b and bias is not None)
            # Held on ctx, not saved: backward takes them (dropping ctx's reference), so autograd
            # can adopt d W as the .grad itself instead of copying a [V, d] tensor.
            ctx.grads = (dh, dw, db)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        else:
            lse, target = chunked.head_forward(hidden, weight, bias, labels, chunk)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        return (lse - target).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grads = ctx.grads if ctx.eager else None
        if grads is not None:
            # The kept gradients are handed out as they are (no [V, d]-sized copy), scaled in
            # place when grad_output is not 1 (MiniJoint's mid loss weight), and the tied buffer
            # may add into them: so they serve one backward (a later one recomputes, below).
            ctx.grads = None
            unit = bool(torch.all(grad_output == 1))
            dh, dw, db = (None if g is None else (g if unit else g.mul_(grad_output.to(g.dtype))).to(dt)
                          for g, dt in zip(grads, ctx.dtypes))
            return dh, _handed_over(ctx.tied, dw), db, None, None, None, None
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        scale = _grad_scale(grad_output, hidden.shape[0], lse.dtype)
        into = ctx.tied.take() if ctx.tied is not None and need_w else None
        dh, dw, db = chunked.head_backward(hidden, weight, bias, labels, lse, scale, ctx.chunk,
                                           need_h, need_w, need_b and bias is not None, d_weight_into=into)
        return dh, _handed_over(ctx.tied, dw), db, None, None, None, None


class TritonMaskedLMLoss(torch.autograd.Function):
    """Same op, Triton tiles (see `triton_head.py`). `blocks`: optional tile-size overrides."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, blocks, tied):
        from ds_minimodel.kernels import triton_head

        ctx.tied = tied if tied is not None and tied.accepts(weight) else None
        fwd = dict(blocks.get("forward", {})) if blocks else {}
        lse, target = triton_head.lse_forward(hidden, weight, bias, labels, **fwd)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.blocks = blocks
        # No masked row (M == 0, the kernels ran empty grids): the loss is 0 (the empty sum), not
        # the NaN of an empty mean; backward then returns zero gradients.
        return (lse - target).mean() if hidden.shape[0] else (lse - target).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        from ds_minimodel.kernels import triton_head

        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        bwd = dict(ctx.blocks.get("backward", {})) if ctx.blocks else {}
        scale = _grad_scale(grad_output, hidden.shape[0], lse.dtype)
        dh, dw, db = triton_head.grad_backward(hidden, weight, bias, labels, lse, scale, need_h,
                                               need_w, need_b and bias is not None, **bwd)
        return dh, _handed_over(ctx.tied, dw), db, None, None, None


class Embedding(torch.autograd.Function):
    """`F.embedding` forward; backward by the chosen scatter-add (`backend`):
    "torch" (embedding_torch), "triton" (deterministic segment sum), "triton_atomic", "cuda"
    (the C++ extension's segment sum). With a `TiedGradient` (`tied`), the heads' d W collected
    there receives the rows in place and is returned as the table's one gradient."""

    @staticmethod
    def forward(ctx, input_ids, weight, padding_idx, backend, tied):
        ctx.save_for_backward(input_ids)
        ctx.num_embeddings = weight.shape[0]
        ctx.padding_idx = padding_idx
        ctx.backend = backend
        ctx.tied = tied
        if tied is not None:
            tied.armed = True
        # The lookup itself: a gather that autograd does not need to see.
        return weight.index_select(0, input_ids.reshape(-1)).view(*input_ids.shape, weight.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None
        (input_ids,) = ctx.saved_tensors
        into = ctx.tied.take() if ctx.tied is not None else None
        if into is not None and ctx.backend == "torch":
            return None, embedding_rows_add_(into, grad_output, input_ids, ctx.padding_idx), None, None, None
        args = (grad_output, input_ids, ctx.num_embeddings, ctx.padding_idx)
        if ctx.backend == "torch":
            grad = embedding_backward_torch(*args)
        elif ctx.backend == "cuda":
            from ds_minimodel.kernels import cuda_ext

            grad = cuda_ext.embedding_backward(*args)
        else:
            from ds_minimodel.kernels import triton_embedding

            if ctx.backend == "triton_atomic":
                grad = triton_embedding.embedding_backward_atomic(*args)
            else:
                grad = triton_embedding.embedding_backward_deterministic(*args)
        if into is not None:  # these kernels write whole tables: add theirs to the heads' buffer
            grad = into.add_(grad)
        return None, grad, None, None, None
