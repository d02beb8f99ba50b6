"""FLOPs of one step of every pipeline step kind, split so that frozen parameters count right.

The unit of account is what `torch.utils.flop_counter.FlopCounterMode` counts: every matrix
product (mm, addmm, bmm, baddbmm, scaled-dot-product attention) costs 2*m*n*k; elementwise ops,
layer norm, softmax, gelu, tanh, embedding lookups and the embedding's scatter-add backward cost
nothing. `tests/test_flops.py` holds `step_flops` to that counter with integer equality for every
step kind, forward and backward separately (the harness that runs it is method/flops_check.py).

Each matrix product of a step is charged to one component (see COMPONENTS) and one of three
parts:

* forward: the product itself;
* input-gradient: dL/d(input) = dL/d(output) @ W, same cost as the forward product. Autograd runs
  it only where some trainable parameter lies *below* that input, so with the whole body frozen it
  still runs through every layer between the loss and the (trainable) embeddings, but not below the
  lowest trainable parameter (MiniPost's top: layer k+1's qkv input-gradient is never computed);
* weight-gradient: dL/dW = input^T @ dL/d(output), same cost again, only for trainable weights.

So full training costs ~3x the forward (the "6N" rule: 2N forward + 4N backward) and
embedding-only training through a frozen body ~2x the forward (the "4N" rule: 2N forward + 2N
input-gradients; see docs/flops.md).

Who trains in each step kind is defined once, in `method/rules.py`: the steps freeze their models
with `rules.set_requires_grad_for_step` and the count (`step_plan`) reads the same
`is_trainable`, plus the run's `train.freeze` patterns. The count follows autograd per parameter,
so any frozen set counts right, a partly frozen layer included.

Attention. The scores q@k^T and the mix probs@v are bmm's of 2*B*T*T*d FLOPs each (summed over
heads: B*h batches of [T, d/h] @ [d/h, T]). Their backward runs both operands' gradients of both
products (4 products) wherever the gradient has to pass through the layer. That is what the
explicit implementation (`attention="explicit"`) shows FlopCounterMode. With `attention="sdpa"`:
on CUDA the counter charges the fused kernels the same forward plus a backward of 5 products (it
recomputes q@k^T from the saved log-sum-exp); we book that extra product as hardware-only
`recompute`, not as model FLOPs. On CPU in torch 2.13 the counter sees 0 for SDPA's fused kernel
(`_scaled_dot_product_flash_attention_for_cpu` has no registered formula), which runs whenever
there is no attention dropout (eval, or attention_dropout=0); with dropout in training CPU SDPA
falls back to the math path, whose bmm's the counter sees exactly as for "explicit".

MLM head kernels. `kernels != "off"` (chunked torch, Triton) cost the same model FLOPs as the plain
F.linear + cross-entropy. The Triton kernels and the chunked head's "vocab" strategy recompute the
logits in backward instead of storing [M, V]: one more 2*M*d*V, booked as hardware-only
`recompute`. Its "rows" strategy (model.head_strategy; "auto" picks it on CPU) keeps each row
block's logits and computes the gradients from them: no recompute. (FlopCounterMode cannot check
this: it counts the recompute GEMM but not the in-place `addmm_` that accumulates d hidden, so its
total for the chunked head equals the plain head's by coincidence; `tests/test_flops.py` counts
every GEMM itself.)

MFU (training/utilisation.py) counts `total` (model FLOPs), HFU counts `hardware_total` = total + recompute (activation
checkpointing with `recompute=True`, flash attention's score recompute under SDPA, and the fused
MLM heads' logits recompute).
All numbers are per rank for the given per-rank micro-batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ds_minimodel import kernels
from ds_minimodel.config import ModelConfig
from ds_minimodel.errors import UserError
from ds_minimodel.method.methods import ADAPT_KIND, MINIJOINT
from ds_minimodel.model import MLMEncoder

# STEP_KINDS and ROUTE are also read through this module by the launchers.
from ds_minimodel.method.rules import (  # noqa: F401
    ENCODER,
    ROUTE,
    STEP_KINDS,
    TASK_HEADS,
    check_freeze_patterns,
    check_kind,
    is_trainable,
    minipost_depth,
    set_requires_grad_for_step,
)

COMPONENTS = ("embeddings", "attn_proj", "attn_scores", "mlp", "mid_head", "final_head", "task_head")
TITLES = {
    "embeddings": "embeddings",
    "attn_proj": "attention qkv+out",
    "attn_scores": "attention scores/values",
    "mlp": "MLP fc1+fc2",
    "mid_head": "mid MLM head",
    "final_head": "final MLM head",
    "task_head": "task head",
}


@dataclass(frozen=True)
class Flops:
    """FLOPs of one component in one step."""

    forward: int = 0
    input_grad: int = 0
    weight_grad: int = 0
    # Hardware-only FLOPs (recomputation); never part of `total`, so never part of MFU.
    recompute: int = 0

    @property
    def backward(self) -> int:
        return self.input_grad + self.weight_grad

    @property
    def total(self) -> int:
        return self.forward + self.input_grad + self.weight_grad

    @property
    def hardware_total(self) -> int:
        return self.total + self.recompute

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def human(x: float) -> str:
    """1234567 -> '1.235 M' (4 significant digits, SI prefix, trailing space for a unit)."""
    for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.4g} {unit}"
    return f"{x:.4g} "


@dataclass
class FlopReport:
    """FLOPs of one step (per rank), by component, split into forward / input-grad / weight-grad."""

    kind: str
    batch_size: int
    seq_len: int
    num_masked: int
    components: dict = field(default_factory=dict)  # name -> Flops, every name of COMPONENTS

    def _sum(self, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.components.values())

    @property
    def forward(self) -> int:
        return self._sum("forward")

    @property
    def input_grad(self) -> int:
        return self._sum("input_grad")

    @property
    def weight_grad(self) -> int:
        return self._sum("weight_grad")

    @property
    def backward(self) -> int:
        return self.input_grad + self.weight_grad

    @property
    def total(self) -> int:
        """Model FLOPs of the step (what MFU divides)."""
        return self.forward + self.backward

    @property
    def recompute(self) -> int:
        return self._sum("recompute")

    @property
    def hardware_total(self) -> int:
        """Model FLOPs plus recomputation (what HFU divides)."""
        return self.total + self.recompute

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def per_token(self) -> float:
        """Model FLOPs per input token (every position of the batch, masked or not)."""
        return self.total / self.tokens

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_masked": self.num_masked,
            "components": {name: dataclasses.asdict(f) | {"total": f.total} for name, f in self.components.items()},
            "forward": self.forward,
            "input_grad": self.input_grad,
            "weight_grad": self.weight_grad,
            "backward": self.backward,
            "total": self.total,
            "recompute": self.recompute,
            "hardware_total": self.hardware_total,
            "per_token": self.per_token,
        }

    def table(self) -> str:
        """Per-component table, per step (FLOPs) and per token (FLOPs / (batch * seq_len))."""
        cols = ("forward", "input-grad", "weight-grad", "total")
        w = max(len(t) for t in TITLES.values()) + 2
        lines = [
            f"step {self.kind}: batch {self.batch_size} x seq {self.seq_len} = {self.tokens} tokens, "
            f"{self.num_masked} masked"
        ]
        rows = [(TITLES[n], self.components[n]) for n in COMPONENTS]
        rows.append(("TOTAL", Flops(self.forward, self.input_grad, self.weight_grad, self.recompute)))
        for title, div in (("per step [FLOP]", 1), ("per token [FLOP]", self.tokens)):
            lines.append("")
            lines.append(f"{title:<{w}}" + "".join(f"{c:>14}" for c in cols) + f"{'share':>8}")
            for name, f in rows:
                vals = (f.forward, f.input_grad, f.weight_grad, f.total)
                share = f"{100 * f.total / self.total:7.1f}%" if self.total else "       -"
                lines.append(f"{name:<{w}}" + "".join(f"{human(v / div):>14}" for v in vals) + share)
        if self.recompute:
            lines.append("")
            parts = ", ".join(f"{TITLES[n]} {human(f.recompute)}FLOP" for n, f in self.components.items() if f.recompute)
            lines.append(
                f"hardware-only recompute {human(self.recompute)}FLOP per step ({parts}); "
                f"hardware total {human(self.hardware_total)}FLOP, for HFU"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# What one step runs and trains (who trains: the step kind's rule in method/rules.py).

_NAMES: dict = {}


def encoder_parameter_names(cfg: ModelConfig) -> tuple:
    """MLMEncoder(cfg).named_parameters() names (the tied decoder weight once, as
    embeddings.word). They depend only on the depth and the mid head: read off a tiny model of
    that structure (built once per structure)."""
    key = (cfg.num_layers, cfg.mini_depth)
    if key not in _NAMES:
        n = max(8, cfg.pad_token_id + 1)
        tiny = dataclasses.replace(cfg, vocab_size=n, max_positions=n, hidden_size=4, num_heads=1,
                                   intermediate_size=4)
        with torch.random.fork_rng(devices=[]):  # its init must not move the run's RNG (dropout)
            _NAMES[key] = tuple(name for name, _ in MLMEncoder(tiny).named_parameters())
    return _NAMES[key]


@dataclass(frozen=True)
class StepPlan:
    """What one step runs and what it trains: everything its FLOPs depend on besides shapes."""

    kind: str
    depth: int  # layers run
    mini_depth: int | None  # the mid head runs on the output of this layer (None: not run)
    final_head: bool  # the final MLM head runs on the last layer's output
    task_head: str | None  # "classification" (on the last layer's <s>), "span" (every token) or None
    # MLMEncoder parameter names that train (the tied MLM decoder weight is embeddings.word).
    trainable: frozenset

    def trains(self, prefix: str) -> bool:
        """Whether some parameter whose name starts with `prefix` trains."""
        return any(n.startswith(prefix) for n in self.trainable)


def step_plan(cfg: ModelConfig, kind: str, *, mini_depth: int | None = None,
              freeze: Sequence[str] = ()) -> StepPlan:
    """`freeze`: the run's train.freeze patterns (MLM kinds), frozen on top of the kind's rule."""
    check_kind(kind)
    if cfg.vocab_size is None:
        raise UserError("model.vocab_size must be set to count FLOPs (the MLM head is d x vocab)")
    k = minipost_depth(cfg, kind, mini_depth)
    route = ROUTE[kind]
    if route == "joint" and cfg.mini_depth is None:
        raise UserError(f"step {kind} runs the MiniJoint mid head: set model.mini_depth")
    if kind == ADAPT_KIND[MINIJOINT] and cfg.mini_depth is not None:
        raise UserError(f"step {kind} runs the MiniJoint mini-model (layers 1..k, its mid head as the "
                        "MLM head), not the full model: pass its config, flops.minijoint_config(cfg)")
    if freeze and kind in TASK_HEADS:
        raise UserError(f"step {kind}: train.freeze patterns are counted for the MLM step kinds only")
    names = encoder_parameter_names(cfg)
    check_freeze_patterns(names, freeze)
    body = ENCODER if kind in TASK_HEADS else ""  # how the fine-tuning models name the encoder
    return StepPlan(
        kind=kind,
        depth=cfg.num_layers,
        mini_depth=cfg.mini_depth if route == "joint" else None,
        final_head=route in ("joint", "final"),
        task_head=TASK_HEADS.get(kind),
        trainable=frozenset(n for n in names if is_trainable(body + n, kind, mini_depth=k, freeze=freeze)),
    )


# --------------------------------------------------------------------------------------------
# The count.


def _linear(rows: int, n_in: int, n_out: int, *, grad_input: bool, grad_weight: bool) -> Flops:
    """y = x @ W^T + b over `rows` rows. Forward: [rows, n_in] @ [n_in, n_out] = 2*rows*n_in*n_out.
    dL/dx = dL/dy @ W and dL/dW = dL/dy^T @ x cost the same each; the bias gradient is a row sum
    (no matmul)."""
    f = 2 * rows * n_in * n_out
    return Flops(f, f if grad_input else 0, f if grad_weight else 0)


def head_recomputes(cfg: ModelConfig, device_type: str | None = None) -> bool:
    """Whether the fused MLM head recomputes its logits in backward on `device_type` (default:
    CUDA when there is one, as the training jobs run): Triton always, the chunked head on its
    "vocab" strategy."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.kernels == "off":
        return False
    triton = cfg.kernels == "triton" or (cfg.kernels == "auto" and device_type == "cuda" and kernels.triton_available())
    return triton or kernels.resolve_strategy(cfg.head_strategy, device_type) == "vocab"


def _mlm_head(cfg: ModelConfig, plan: StepPlan, head: str, m: int, *, grad_in: bool) -> Flops:
    """RoBERTa MLM head `head` ("lm_head" / "mid_head") on the m gathered masked rows: dense d->d,
    gelu, LN, tied decoder d->V. grad_in: whether its input needs a gradient."""
    d, v = cfg.hidden_size, cfg.vocab_size
    # dense: input-grad only if something below the head trains, weight-grad if its weight trains.
    dense = _linear(m, d, d, grad_input=grad_in, grad_weight=f"{head}.dense.weight" in plan.trainable)
    # decoder, the [m, V] logits: its input h needs a gradient if the dense/LN below it or
    # anything below the head trains; its weight is the word table. The fused heads (kernels !=
    # "off": chunked torch, Triton) have the same model FLOPs but never store the logits: their
    # backward recomputes them chunk by chunk, one more [m, d] @ [d, V] (hardware only).
    h_needs_grad = grad_in or plan.trains(f"{head}.dense.") or plan.trains(f"{head}.layer_norm.")
    decoder = _linear(m, d, v, grad_input=h_needs_grad, grad_weight="embeddings.word" in plan.trainable)
    if head_recomputes(cfg) and decoder.backward:
        decoder = dataclasses.replace(decoder, recompute=decoder.forward)
    return dense + decoder


def _flops_of_plan(cfg: ModelConfig, plan: StepPlan, batch_size: int, seq_len: int, num_masked: int,
                   num_classes: int, recompute: bool) -> FlopReport:
    d, inter = cfg.hidden_size, cfg.intermediate_size
    B, T, M = batch_size, seq_len, num_masked
    rows = B * T  # every position goes through every layer (padding is computed too)
    c = {name: Flops() for name in COMPONENTS}
    # embeddings: three table lookups + LN; backward of a lookup is a scatter-add. No matmul.
    # needs_grad[i]: whether the output of layer i (0 = embeddings) requires grad, i.e. whether some
    # trainable parameter lies at or below it, i.e. whether autograd carries a gradient into it.
    needs_grad = [plan.trains("embeddings.")]
    for i in range(plan.depth):
        p = f"layers.{i}."

        def weight(module: str) -> bool:  # the weight-gradient matmul runs
            return f"{p}{module}.weight" in plan.trainable

        def any_of(*modules: str) -> bool:  # something in these modules trains (weight, bias, LN)
            return any(plan.trains(f"{p}{mod}.") for mod in modules)

        # Whether each tensor inside the layer requires grad, bottom to top: a tensor does when
        # its input does or a parameter on the way to it trains. Each matmul's input-gradient
        # runs exactly when its input requires grad (autograd skips it otherwise).
        g_in = needs_grad[-1]  # the layer's input x
        g_qkv = g_in or any_of("attention.qkv")  # q, k, v
        g_mix = g_qkv or any_of("attention.out")  # the attention block's output
        g_fc1_in = g_mix or any_of("attention_norm")  # LN(x + attention): the MLP's input
        g_fc2_in = g_fc1_in or any_of("fc1")  # gelu(fc1(.))
        g = g_fc2_in or any_of("fc2", "mlp_norm")  # the layer's output
        # qkv: one fused [rows, d] @ [d, 3d]; its input-grad only when x itself needs a gradient
        # (MiniPost's first trainable layer: x comes from a frozen layer, autograd skips it).
        proj = _linear(rows, d, 3 * d, grad_input=g_in, grad_weight=weight("attention.qkv"))
        # out: [rows, d] @ [d, d] on the attention mix, which needs a gradient whenever q, k, v do.
        proj += _linear(rows, d, d, grad_input=g_qkv, grad_weight=weight("attention.out"))
        # scores q@k^T and mix probs@v: B*h bmm's of [T, d/h] @ [d/h, T] and [T, T] @ [T, d/h]:
        # 2*B*T*T*d each. Backward: dq, dk of the first, dprobs, dv of the second, same cost each.
        s = 2 * B * T * T * d
        # SDPA's fused backward recomputes q@k^T (hardware only); explicit attention keeps probs.
        sdpa_recompute = s if (g_qkv and cfg.attention == "sdpa") else 0
        scores = Flops(2 * s, 4 * s if g_qkv else 0, 0, sdpa_recompute)
        # MLP: fc1 [rows, d] @ [d, I] and fc2 [rows, I] @ [I, d]; gelu and LNs are free.
        mlp = _linear(rows, d, inter, grad_input=g_fc1_in, grad_weight=weight("fc1"))
        mlp += _linear(rows, inter, d, grad_input=g_fc2_in, grad_weight=weight("fc2"))
        if recompute and g:
            # Activation checkpointing per layer re-runs the layer's forward in backward, only
            # where backward passes (a frozen layer below every trainable parameter is not rerun).
            proj = dataclasses.replace(proj, recompute=proj.recompute + proj.forward)
            scores = dataclasses.replace(scores, recompute=scores.recompute + scores.forward)
            mlp = dataclasses.replace(mlp, recompute=mlp.recompute + mlp.forward)
        c["attn_proj"] += proj
        c["attn_scores"] += scores
        c["mlp"] += mlp
        needs_grad.append(g)
    if plan.final_head:
        c["final_head"] = _mlm_head(cfg, plan, "lm_head", M, grad_in=needs_grad[plan.depth])
    if plan.mini_depth is not None:
        c["mid_head"] = _mlm_head(cfg, plan, "mid_head", M, grad_in=needs_grad[plan.mini_depth])
    if plan.task_head == "classification":
        # Sequence classification on the B <s> states: dense d->d, tanh, out d->C; the head trains.
        c["task_head"] = _linear(B, d, d, grad_input=needs_grad[plan.depth], grad_weight=True)
        c["task_head"] += _linear(B, d, num_classes, grad_input=True, grad_weight=True)
    elif plan.task_head == "span":
        # Extractive QA: start and end logits for every position, [B*T, d] @ [d, 2]; the split,
        # the two cross-entropies and their mean are free.
        c["task_head"] = _linear(rows, d, 2, grad_input=needs_grad[plan.depth], grad_weight=True)
    return FlopReport(kind=plan.kind, batch_size=B, seq_len=T, num_masked=M, components=c)


def step_flops(cfg: ModelConfig, kind: str, batch_size: int, seq_len: int, num_masked: int, *,
               mini_depth: int | None = None, num_classes: int = 2,
               recompute: bool = False, freeze: Sequence[str] = ()) -> FlopReport:
    """FLOPs of one step of `kind` on a per-rank micro-batch of `batch_size` x `seq_len` tokens of
    which `num_masked` carry an MLM label.

    `cfg` is the model that runs: for the MiniPost kinds the mini-model of k + n layers (see
    `minipost_config`), with `mini_depth` = k (default: cfg.mini_depth); for
    adapt_minijoint the MiniJoint mini-model (`minijoint_config`); for adapt_full the full model.
    `recompute`: per-layer activation checkpointing (adds to the hardware count only).
    `freeze`: the run's train.freeze patterns; any parameters, whole layers or parts of them.
    """
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if v <= 0:
            raise UserError(f"{name} must be positive, got {v}")
    if not 0 <= num_masked <= batch_size * seq_len:
        raise UserError(f"num_masked must be in 0..batch_size*seq_len, got {num_masked}")
    if num_classes <= 0:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    plan = step_plan(cfg, kind, mini_depth=mini_depth, freeze=freeze)
    return _flops_of_plan(cfg, plan, batch_size, seq_len, num_masked, num_classes, recompute)


def minipost_config(cfg: ModelConfig, mini_depth: int, top_layers: int = 1) -> ModelConfig:
    """The MiniPost mini-model of `cfg`: its bottom `mini_depth` layers plus `top_layers` new ones,
    with the final MLM head and no mid head."""
    if not 1 <= mini_depth < cfg.num_layers:
        raise UserError(f"MiniPost frozen layers must be in 1..{cfg.num_layers - 1}, got {mini_depth}")
    if top_layers < 1:
        raise UserError(f"MiniPost top layers must be >= 1, got {top_layers}")
    return dataclasses.replace(cfg, num_layers=mini_depth + top_layers, mini_depth=None)


def minijoint_config(cfg: ModelConfig) -> ModelConfig:
    """The MiniJoint mini-model of `cfg` as adaptation runs it (`artefacts.surgery.minijoint_mini`): layers
    1..k with the mid head as its final MLM head."""
    if cfg.mini_depth is None:
        raise UserError("the MiniJoint mini-model needs model.mini_depth (k)")
    return dataclasses.replace(cfg, num_layers=cfg.mini_depth, mini_depth=None)


def expected_masked(batch_size: int, seq_len: int, mask_prob: float) -> int:
    """Masked positions of a batch: mask_prob of the non-special tokens (all but <s> and </s>)."""
    return round(mask_prob * batch_size * max(seq_len - 2, 0))
