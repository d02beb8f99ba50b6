"""What `flops.step_flops` is checked against, and what others would have counted.

* The real thing: one step of a step kind run under torch's `FlopCounterMode` (`count_step`,
  `build_step`, `measure_step_flops`), which `tests/test_flops.py`, `bench/flops_accuracy.py` and
  `profile_flops --check` hold the analytic count to. It sits in the library, not in bench/,
  because the profile_flops command prints these counts to users.
* Outside estimates: the "6N" rule of Hugging Face's Trainer and the arithmetic of DeepSpeed's
  flops profiler, which `bench/flops_accuracy.py` shows are wrong for frozen layers (DESIGN: the
  profiler assumes backward = 2x forward, and under ZeRO-3 counts linear layers twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ds_minimodel.config import ModelConfig
from ds_minimodel.method.flops import check_kind, step_plan
from ds_minimodel.method.rules import ROUTE, set_requires_grad_for_step
from ds_minimodel.model import (
    IGNORE_INDEX,
    MLMEncoder,
    QuestionAnswering,
    SequenceClassifier,
)

# --------------------------------------------------------------------------------------------
# Parameters and the rules of thumb others use.


def param_counts(cfg: ModelConfig) -> dict:
    """Parameters of MLMEncoder(cfg) by part; the tied decoder weight is the word table, counted once."""
    d, inter, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    layer = (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * inter + inter) + (inter * d + d) + 2 * d
    head = (d * d + d) + 2 * d + v  # dense, layer norm, output bias
    return {
        "embedding_tables": (v + cfg.max_positions + cfg.type_vocab_size) * d,
        "embedding_norm": 2 * d,
        "layers": cfg.num_layers * layer,
        "lm_head": head,
        "mid_head": head if cfg.mini_depth else 0,
    }


def six_n_rule(cfg: ModelConfig, tokens: int, *, hf_tied_decoder_quirk: bool = False) -> int:
    """Hugging Face Trainer's `floating_point_ops`: 6 * tokens * num_parameters(exclude_embeddings=True)
    (transformers 5.x trainer.py; tokens = input_ids.numel()), over the parameters of MLMEncoder(cfg).
    The convention drops the nn.Embedding tables (word, position, token type) and ignores which
    parameters are frozen, the attention term and how many positions get logits.

    hf_tied_decoder_quirk: what transformers 5.x really reports for XLMRobertaForMaskedLM, which
    registers lm_head before roberta, so named_parameters() yields the tied word table as
    "lm_head.decoder.weight" and exclude_embeddings (matching by module name) keeps it: V*d more.
    """
    p = param_counts(cfg)
    n = sum(p.values()) - p["embedding_tables"]
    if hf_tied_decoder_quirk:
        n += cfg.vocab_size * cfg.hidden_size
    return 6 * tokens * n


@dataclass(frozen=True)
class DeepSpeedEstimate:
    """What DeepSpeed's flops profiler reports for one step of this kind."""

    forward: int  # FlopsProfiler.get_total_flops(): the forward pass it measured
    step: int  # its "fwd+bwd" numerator: (3 + recompute_fwd_factor) * forward (just forward for eval)
    matmul: int  # part of `forward` from linear layers and attention matmuls
    elementwise: int  # part of `forward` from layer norm (5/elem) and gelu (1/elem)
    zero3_double_count: int  # part of `forward` counted a second time under ZeRO-3


def deepspeed_profiler_estimate(cfg: ModelConfig, kind: str, batch_size: int, seq_len: int, num_masked: int, *,
                                mini_depth: int | None = None, num_classes: int = 2,
                                zero3: bool = False, recompute_fwd_factor: float = 0.0) -> DeepSpeedEstimate:
    """DeepSpeed 0.19's flops profiler (deepspeed/profiling/flops_profiler/profiler.py) on this step.

    It monkey-patches torch.nn.functional and tensor methods for one forward and sums, per module:
    F.linear 2*numel(input)*out_features; torch.matmul / Tensor.matmul / @ / mm / bmm
    2*prod(a.shape)*b.shape[-1]; torch.addmm 2*m*n*k + numel(bias); F.scaled_dot_product_attention
    4*B*h*T*T*(d/h); F.layer_norm 5 per element (4 without affine); F.gelu 1 per element; F.softmax
    1 per element (our explicit attention calls Tensor.softmax, not patched: 0); F.embedding 0;
    `x + y` / `x * y` operators, torch.tanh, cross-entropy and dropout: not patched, 0. It has no
    notion of frozen parameters: the engine prints fwd+bwd as (bwd_factor + 1) * forward with
    bwd_factor = 2 + recompute_fwd_factor (flops_profiler.recompute_fwd_factor in the JSON).

    ZeRO-3: zero.Init (and the engine, which wraps a model built outside it in
    Init(module=...)) replaces torch.nn.functional.linear process-wide by
    LinearFunctionForZeroStage3 unless zero_optimization.memory_efficient_linear is false. Its
    forward calls torch.addmm (2-D input with bias) or Tensor.matmul, both patched too, so every
    linear layer is counted twice: once by the F.linear wrapper and once inside (addmm adds
    numel(bias)).

    This mirrors the kernels="off" model (the plain F.linear decoder) and model.py's task heads
    (SequenceClassifier: Linear, torch.tanh, Linear; QuestionAnswering: one Linear(d, 2)).
    """
    plan = step_plan(cfg, kind, mini_depth=mini_depth)
    d, inter, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    B, T, M, C = batch_size, seq_len, num_masked, num_classes
    rows = B * T
    ln = 5  # per element, affine layer norm
    matmul = elementwise = zero3_extra = 0
    elementwise += ln * rows * d  # embeddings LN
    per_layer_linear = 2 * rows * d * (3 * d + d + inter + inter)  # qkv, out, fc1, fc2
    matmul += plan.depth * (per_layer_linear + 4 * B * T * T * d)  # + scores and mix
    elementwise += plan.depth * (2 * ln * rows * d + rows * inter)  # 2 LNs + gelu on [rows, I]
    # 3-D inputs go through Tensor.matmul inside the ZeRO-3 linear: same count again, no bias.
    zero3_extra += plan.depth * per_layer_linear
    heads = int(plan.final_head) + int(plan.mini_depth is not None)
    # MLM head on M rows: dense, gelu, LN, decoder (the reference kernel skips F.linear when M == 0).
    matmul += heads * (2 * M * d * d + 2 * M * d * v)
    elementwise += heads * (M * d + ln * M * d)
    # 2-D inputs with bias go through torch.addmm inside the ZeRO-3 linear: + numel(bias).
    zero3_extra += heads * ((2 * M * d * d + d) + ((2 * M * d * v + v) if M else 0))
    if plan.task_head == "classification":
        matmul += 2 * B * d * d + 2 * B * d * C
        zero3_extra += (2 * B * d * d + d) + (2 * B * d * C + C)
    elif plan.task_head == "span":  # Linear(d, 2) on the 3-D states: Tensor.matmul under ZeRO-3, no bias
        matmul += 2 * rows * d * 2
        zero3_extra += 2 * rows * d * 2
    forward = matmul + elementwise + (zero3_extra if zero3 else 0)
    step = forward if kind == "eval" else round((3 + recompute_fwd_factor) * forward)
    return DeepSpeedEstimate(forward=forward, step=step, matmul=matmul, elementwise=elementwise,
                             zero3_double_count=zero3_extra if zero3 else 0)


# --------------------------------------------------------------------------------------------
# The real thing: run one step under torch's FlopCounterMode (tests, bench, `profile_flops --check`).


def masked_batch(cfg: ModelConfig, batch_size: int, seq_len: int, num_masked: int, seed: int = 0):
    """Random input ids (no pads) and labels with exactly `num_masked` labelled positions."""
    g = torch.Generator().manual_seed(seed)
    low = cfg.pad_token_id + 1
    ids = torch.randint(low, cfg.vocab_size, (batch_size, seq_len), generator=g)
    labels = torch.full((batch_size * seq_len,), IGNORE_INDEX, dtype=torch.long)
    pos = torch.randperm(batch_size * seq_len, generator=g)[:num_masked]
    labels[pos] = torch.randint(0, cfg.vocab_size, (num_masked,), generator=g)
    return ids, labels.view(batch_size, seq_len)


def step_loss(model, kind: str, input_ids, labels, class_labels=None) -> torch.Tensor:
    """The loss one step of `kind` computes: the MLM loss of the kind's route, or the task loss
    of a SequenceClassifier (class_labels: classes) / QuestionAnswering (class_labels: answer
    starts; the ends are the same, reversed)."""
    if kind == "finetune":
        return model(input_ids, labels=class_labels)["loss"]
    if kind == "finetune_qa":
        return model(input_ids, start_positions=class_labels, end_positions=class_labels.flip(0))["loss"]
    return model(input_ids, labels=labels, route=ROUTE[kind])["loss"]


def count_step(model, kind: str, input_ids, labels, *, class_labels=None) -> tuple[int, int]:
    """(forward, backward) FLOPs FlopCounterMode counts for one step of `kind`; the caller has set
    requires_grad (method.rules.set_requires_grad_for_step)."""
    check_kind(kind)
    with FlopCounterMode(display=False) as fwd_counter, torch.set_grad_enabled(kind != "eval"):
        loss = step_loss(model, kind, input_ids, labels, class_labels)
    if kind == "eval":
        return fwd_counter.get_total_flops(), 0
    with FlopCounterMode(display=False) as bwd_counter:
        loss.backward()
    return fwd_counter.get_total_flops(), bwd_counter.get_total_flops()


def build_step(cfg: ModelConfig, kind: str, batch_size: int, seq_len: int, num_masked: int, *,
               mini_depth: int | None = None, num_classes: int = 2, seed: int = 0,
               freeze: Sequence[str] = ()) -> dict:
    """The model a step of `kind` trains (an MLMEncoder, or model.py's SequenceClassifier /
    QuestionAnswering for the fine-tuning kinds), frozen for `kind` (and `freeze` patterns), and
    a batch: the inputs of count_step."""
    torch.manual_seed(seed)
    if kind == "finetune":
        model = SequenceClassifier(cfg, num_classes)
    elif kind == "finetune_qa":
        model = QuestionAnswering(cfg)
    else:
        model = MLMEncoder(cfg)
    set_requires_grad_for_step(model, kind, mini_depth=mini_depth, freeze=freeze)
    ids, labels = masked_batch(cfg, batch_size, seq_len, num_masked, seed)
    # Class labels, or for finetune_qa the answer start positions (ends: the same, reversed).
    high = seq_len if kind == "finetune_qa" else num_classes
    class_labels = torch.randint(0, high, (batch_size,), generator=torch.Generator().manual_seed(seed))
    return {"model": model, "kind": kind, "input_ids": ids, "labels": labels, "class_labels": class_labels}


def measure_step_flops(cfg: ModelConfig, kind: str, batch_size: int, seq_len: int, num_masked: int, *,
                       mini_depth: int | None = None, num_classes: int = 2,
                       seed: int = 0, freeze: Sequence[str] = ()) -> tuple[int, int]:
    """(forward, backward) FlopCounterMode counts for one real step on random data."""
    step = build_step(cfg, kind, batch_size, seq_len, num_masked, mini_depth=mini_depth,
                      num_classes=num_classes, seed=seed, freeze=freeze)
    return count_step(**step)
