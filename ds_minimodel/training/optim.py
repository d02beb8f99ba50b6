"""The optimizer setup both engines share: AdamW parameter groups and the LR schedule."""

from __future__ import annotations

import math

import torch

from ds_minimodel.config import OptimConfig


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only, split as RoBERTa does: no decay on biases and layer norms."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        # Under ZeRO-3's zero.Init a parameter is a 1-D (empty) shard; its real shape is ds_shape.
        shape = getattr(p, "ds_shape", p.shape)
        (no_decay if len(shape) < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw(groups: list[dict], optim: OptimConfig) -> torch.optim.AdamW:
    """torch AdamW, fused: one vectorised kernel over each tensor instead of a dozen elementwise
    passes. On one CPU core it steps a 32k x 768 word table in 17 ms instead of 187 ms, which is
    most of what an adaptation step through a mini-model costs besides its few layers."""
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=True)


def lr_lambda(optim: OptimConfig, total_steps: int):
    def factor(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        span = max(1, total_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        shape = 1.0 - progress if optim.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape

    return factor
