"""Kernels for the embedding-only backward pass.

Two ops, each with a plain-PyTorch spec in `reference.py` and fused paths chosen by `impl`
(the config switch `ModelConfig.kernels`):

* `masked_lm_loss`: the tied MLM output layer + cross-entropy on the masked positions, without
  ever materialising [positions x vocabulary] logits.
* `embedding`: the word-embedding lookup, whose backward (a scatter-add over token ids, the
  entire backward of the matrix trained in adaptation) runs on our kernels.

impl:
  "off"    the reference (full logits / `F.embedding`): Hugging Face's numbers and memory.
  "torch"  plain PyTorch, memory-frugal: vocabulary-chunked head (`chunked.py`), fp32-accumulating
           embedding backward (`embedding_torch.py`). Runs anywhere.
  "triton" the Triton kernels (`triton_head.py`, `triton_embedding.py`): CUDA tensors, or CPU
           tensors under TRITON_INTERPRET=1 (tests); a clear error otherwise.
  "auto"   "triton" for CUDA tensors when triton imports, else "torch".
"""

import torch
import torch.nn.functional as F

from ds_minimodel.kernels import chunked
from ds_minimodel.kernels.reference import masked_lm_loss_reference
from ds_minimodel.kernels.tied_grad import TiedGradient
from ds_minimodel.kernels.triton_support import check_device, triton_available

IMPLS = ("auto", "triton", "torch", "off")

__all__ = ["IMPLS", "STRATEGIES", "TiedGradient", "resolve_strategy", "masked_lm_loss", "embedding", "resolve_impl"]


def resolve_impl(impl, tensor):
    """The concrete implementation ("triton" | "torch" | "off") `impl` means for `tensor`."""
    if impl not in IMPLS:
        raise ValueError(f"kernels: unknown implementation {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    return impl


def _check_head_inputs(hidden, weight, bias, labels):
    problems = []
    if hidden.dim() != 2:
        problems.append(f"hidden must be [M, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or (hidden.dim() == 2 and weight.shape[1] != hidden.shape[1]):
        problems.append(f"weight must be [V, d] with d = hidden.shape[1], got {tuple(weight.shape)}"
                        f" for hidden {tuple(hidden.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        problems.append(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if labels.dim() != 1 or labels.shape[0] != hidden.shape[0]:
        problems.append(f"labels must be [M] = [{hidden.shape[0]}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        problems.append(f"labels must be an integer tensor, got {labels.dtype}")
    if problems:
        raise ValueError("masked_lm_loss: " + "; ".join(problems))
    vocab = weight.shape[0]
    if labels.is_cuda:
        # Device-side check: no host sync in the training loop.
        torch._assert_async(((labels >= 0) & (labels < vocab)).all())
    elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(f"masked_lm_loss: labels must lie in [0, {vocab}) (gather the masked rows "
                         f"first; -100 is not accepted), got min {int(labels.min())}, "
                         f"max {int(labels.max())}")


STRATEGIES = ("auto", "vocab", "rows")
# The chunked head's strategy "auto" picks per device type, as measured by bench/head_strategy.py
# (same shapes, both strategies, alternating, in one process). CPU (2 cores, fp32, the MiniJoint
# step at XLM-R-base shapes): "rows" wins, its one GEMM less outweighs the [R, V] block's traffic
# and its gradients living from forward to backward. CUDA: "vocab" (the Triton kernels' algorithm;
# there a GEMM is cheap next to the [M, V]-sized memory passes "rows" adds), unmeasured here.
AUTO_STRATEGY = {"cpu": "rows", "cuda": "vocab"}


def resolve_strategy(strategy: str, device_type: str) -> str:
    """The chunked head's concrete strategy ("vocab" | "rows") for tensors on `device_type`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"masked_lm_loss: unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    return AUTO_STRATEGY.get(device_type, "vocab") if strategy == "auto" else strategy


def masked_lm_loss(hidden, weight, bias, labels, impl: str = "auto", *, chunk_size=None,
                   strategy="vocab", rows_per_block=None, triton_blocks=None, tied=None):
    """Mean cross-entropy of `hidden @ weight.T + bias` against `labels`.

    hidden: [M, d] states of the M masked positions; weight: [V, d] (tied to the word
    embeddings); bias: [V] or None; labels: [M] int64 in [0, V). Returns a 0-dim fp32 tensor
    (fp64 for fp64 inputs); with M == 0 it is a zero that still depends on the inputs, so every
    rank runs the same backward. impl: "auto" | "triton" | "torch" | "off" (module docstring).
    Gradients flow to hidden, weight and bias; a frozen weight (requires_grad False) costs no
    weight-gradient GEMM on the fused paths. bf16 inputs: logits, softmax statistics and
    gradients accumulate in fp32; gradients come back in the inputs' dtype.

    chunk_size: vocabulary columns per chunk on the "torch" path (default: a [M, C] fp32 buffer
    of at most 128 MiB, C in [1024, 32768]; see `chunked.vocab_chunk_columns`).
    strategy ("torch" path): "vocab" (default; logits recomputed in backward, memory O(M * C)),
    "rows" (gradients computed in forward from row blocks' [R, V] logits: one GEMM less,
    memory O(R * V); rows_per_block defaults to a 512 MiB block, see `chunked.row_block_rows`)
    or "auto" (`resolve_strategy`: the device's measured winner; what models use).
    triton_blocks: tile-size overrides for the Triton kernels, {"forward": {...}, "backward": {...}}.
    tied: the `TiedGradient` of this forward (`tied_grad.py`), when `weight` is the word table
    that `embedding(..., tied=)` looked up: d weight then goes into its one [V, d] buffer.
    """
    impl = resolve_impl(impl, hidden)
    if impl == "off":
        return masked_lm_loss_reference(hidden, weight, bias, labels)
    _check_head_inputs(hidden, weight, bias, labels)
    from ds_minimodel.kernels.functions import ChunkedMaskedLMLoss, TritonMaskedLMLoss

    # The Triton function handles M == 0 itself (empty grids); the chunked path's loops need rows.
    if hidden.shape[0] == 0 and impl != "triton":
        return masked_lm_loss_reference(hidden, weight, bias, labels)  # the connected zero
    if impl == "triton":
        tensors = (hidden, weight, labels) + (() if bias is None else (bias,))
        check_device(*tensors, what="masked_lm_loss")
        return TritonMaskedLMLoss.apply(hidden, weight, bias, labels, triton_blocks, tied)
    elem = torch.finfo(chunked.acc_dtype(hidden.dtype)).bits // 8
    if chunk_size is None:
        chunk_size = chunked.vocab_chunk_columns(hidden.shape[0], weight.shape[0], elem_size=elem)
    if chunk_size < 1:
        raise ValueError(f"masked_lm_loss: chunk_size must be >= 1, got {chunk_size}")
    strategy = resolve_strategy(strategy, hidden.device.type)
    rows = None
    backward_follows = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if strategy == "rows" and backward_follows:
        rows = rows_per_block or chunked.row_block_rows(hidden.shape[0], weight.shape[0], elem_size=elem)
    return ChunkedMaskedLMLoss.apply(hidden, weight, bias, labels, int(chunk_size), rows, tied)


def embedding(input_ids, weight, impl: str = "auto", padding_idx=None, *, deterministic=True, tied=None):
    """`F.embedding(input_ids, weight, padding_idx=padding_idx)`, backward on our kernels.

    The padding row gets no gradient (nn.Embedding's contract; HF RoBERTa / XLM-R: row 1).
    impl: "auto" | "triton" | "torch" | "off" as for `masked_lm_loss`, plus "cuda" for the
    optional C++ extension (`cuda_ext.py`; CUDA machines only). deterministic: on "triton",
    sort + segment sum (True, the default) or atomic adds (False). tied: a fresh `TiedGradient`
    to hand to the MLM heads that read `weight` in this forward (`tied_grad.py`).
    """
    num_embeddings = weight.shape[0]
    if padding_idx is not None:
        if not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"embedding: padding_idx {padding_idx} is outside the {num_embeddings}"
                             " rows of the weight")
        padding_idx = padding_idx % num_embeddings
    backend = impl if impl == "cuda" else resolve_impl(impl, weight)
    if backend == "off" or not (torch.is_grad_enabled() and weight.requires_grad):
        # Nothing to differentiate (frozen embeddings, eval): the plain lookup is the fastest.
        return F.embedding(input_ids, weight, padding_idx=padding_idx)
    from ds_minimodel.kernels.functions import Embedding

    if backend == "triton":
        check_device(input_ids, weight, what="embedding")
        backend = "triton" if deterministic else "triton_atomic"
    elif backend == "cuda" and not weight.is_cuda:
        raise RuntimeError("embedding: impl='cuda' (the C++ extension) needs CUDA tensors")
    return Embedding.apply(input_ids, weight, padding_idx, backend, tied)
