"""Plain-PyTorch specification of every kernel: the numbers the fused paths are checked against.

Nothing here is fast or memory-frugal on purpose: each function is the shortest correct statement
of what a kernel computes, written with the ops Hugging Face uses, so a test can say "the kernel
equals this".
"""

import torch
import torch.nn.functional as F


def masked_lm_loss_reference(hidden, weight, bias, labels):
    """Full [M, V] logits then cross-entropy (mean over M), exactly as Hugging Face does it."""
    if hidden.shape[0] == 0:
        # Keep the graph connected so a rank with no masked token still joins every all-reduce.
        zero = hidden.sum() * 0.0 + weight.sum() * 0.0
        return zero if bias is None else zero + bias.sum() * 0.0
    logits = F.linear(hidden, weight, bias)
    # fp32 softmax for bf16/fp16 logits; fp64 stays fp64 (so fp64 checks test the fused paths'
    # arithmetic, not this cast).
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def masked_lm_loss_grads_reference(hidden, weight, bias, labels, grad_output=1.0):
    """(loss, d hidden, d weight, d bias) of `masked_lm_loss_reference`, by autograd, in the
    inputs' dtype. The fused kernels compute exactly these four tensors: with
    p = softmax(h W^T + b) and Y the one-hot labels, G = (p - Y) * grad_output / M, then
    d hidden = G W, d weight = G^T h, d bias = sum over rows of G.
    """
    h = hidden.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(True)
    b = None if bias is None else bias.detach().requires_grad_(True)
    loss = masked_lm_loss_reference(h, w, b, labels)
    loss.backward(torch.as_tensor(grad_output, dtype=loss.dtype))
    return loss.detach(), h.grad, w.grad, None if b is None else b.grad


def embedding_backward_reference(grad_output, input_ids, num_embeddings, padding_idx=None):
    """d weight of an embedding lookup: row v is the sum of the output gradients of every token
    whose id is v, accumulated in fp32 and returned in grad_output's dtype; the padding row gets
    no gradient (what nn.Embedding(padding_idx=...) does, e.g. row 1 in HF RoBERTa / XLM-R).
    """
    d = grad_output.shape[-1]
    ids = input_ids.reshape(-1)
    acc = torch.zeros(num_embeddings, d, dtype=torch.float32, device=grad_output.device)
    acc.index_add_(0, ids, grad_output.reshape(-1, d).float())
    if padding_idx is not None:
        acc[padding_idx] = 0
    return acc.to(grad_output.dtype)
