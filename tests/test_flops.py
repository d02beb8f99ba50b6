"""The analytic FLOP counter against the real thing: torch's FlopCounterMode, integer-exact.

Every step kind runs one forward + backward on a small model with explicit attention and the plain
MLM head, frozen as the brief of that step says (written out here independently of
flops.is_trainable), with a known number M of masked positions; `step_flops` must equal what
FlopCounterMode counted, forward and backward separately.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ds_minimodel import flops
from ds_minimodel.config import ModelConfig, PretrainConfig, load_config
from ds_minimodel.errors import UserError
from ds_minimodel.model import IGNORE_INDEX, MLMEncoder

REPO = Path(__file__).resolve().parents[1]
K = 2  # MiniJoint mid head / MiniPost frozen layers
SHAPES = [(3, 19, 7), (2, 11, 0), (1, 8, 8)]  # (batch, seq, masked): typical, no mask, all masked


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=301, hidden_size=48, num_layers=4, num_heads=4, intermediate_size=96,
                max_positions=40, mid_head_layer=K, attention="explicit", kernels="off")
    return ModelConfig(**(base | kw))


def cfg_for(kind: str, **kw) -> ModelConfig:
    """MiniPost kinds run the mini-model: K frozen layers + 1 new top layer, no mid head."""
    if kind in ("minipost_top", "adapt_minipost"):
        return small_cfg(num_layers=K + 1, mid_head_layer=None, **kw)
    return small_cfg(**kw)


def brief_trainable(kind: str, name: str) -> bool:
    """Who trains, as the step kinds are specified (independent of flops.is_trainable)."""
    if kind == "pretrain":  # everything the route uses (route final: not the mid head)
        return not name.startswith("mid_head.")
    if kind == "pretrain_joint":
        return True
    if kind == "minipost_top":  # layers 1..K and embeddings frozen; layer K+1 and lm_head train
        return name.startswith(f"layers.{K}.") or name.startswith("lm_head.")
    if kind == "adapt_mini":
        return name in ("embeddings.word", "mid_head.bias")
    if kind in ("adapt_minipost", "adapt_full"):
        return name in ("embeddings.word", "lm_head.bias")
    if kind in ("finetune", "finetune_qa"):  # the whole embedding module (layer norm too), the MLM heads
        return not name.startswith(("embeddings.", "lm_head.", "mid_head."))
    return False  # eval


class InlineClassifier(nn.Module):
    """Stand-in task head (dense d->d, tanh, out d->C on <s>) until the lead wires the real one."""

    def __init__(self, d: int, num_classes: int):
        super().__init__()
        self.dense = nn.Linear(d, d)
        self.out = nn.Linear(d, num_classes)

    def forward(self, hidden):
        return self.out(torch.tanh(self.dense(hidden[:, 0])))


def batch(cfg: ModelConfig, B: int, T: int, M: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(cfg.pad_token_id + 1, cfg.vocab_size, (B, T), generator=g)
    labels = torch.full((B * T,), IGNORE_INDEX)
    labels[torch.randperm(B * T, generator=g)[:M]] = torch.randint(0, cfg.vocab_size, (M,), generator=g)
    labels = labels.view(B, T)
    assert int(labels.ne(IGNORE_INDEX).sum()) == M
    return ids, labels


def run_counted(cfg: ModelConfig, kind: str, B: int, T: int, M: int, num_classes: int = 3):
    """One real step under FlopCounterMode: (forward, backward, model, head)."""
    torch.manual_seed(0)
    model = MLMEncoder(cfg)
    head = {"finetune": lambda: InlineClassifier(cfg.hidden_size, num_classes),
            "finetune_qa": lambda: nn.Linear(cfg.hidden_size, 2)}.get(kind, lambda: None)()
    for name, p in model.named_parameters():
        p.requires_grad_(brief_trainable(kind, name))
    ids, labels = batch(cfg, B, T, M)
    route = {"pretrain": "final", "pretrain_joint": "joint", "adapt_mini": "mid"}.get(kind, "final")
    with FlopCounterMode(display=False) as fwd:
        with torch.set_grad_enabled(kind != "eval"):
            if kind == "finetune":
                loss = F.cross_entropy(head(model.encode(ids)[-1]), torch.arange(B) % num_classes)
            elif kind == "finetune_qa":  # span head on every token, mean of start and end CE
                start, end = head(model.encode(ids)[-1]).unbind(-1)
                loss = (F.cross_entropy(start, torch.arange(B) % T) + F.cross_entropy(end, torch.arange(B) % T)) / 2
            else:
                loss = model(ids, labels=labels, route=route)["loss"]
    bwd_flops = 0
    if kind != "eval":
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        bwd_flops = bwd.get_total_flops()
    return fwd.get_total_flops(), bwd_flops, model, head


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", flops.STEP_KINDS)
def test_step_flops_equal_flop_counter_mode(kind, shape):
    B, T, M = shape
    cfg = cfg_for(kind)
    fwd, bwd, model, head = run_counted(cfg, kind, B, T, M)
    report = flops.step_flops(cfg, kind, B, T, M, minipost_frozen_layers=K, num_classes=3)
    assert report.forward == fwd
    assert report.backward == bwd
    assert report.total == fwd + bwd
    # Every parameter the brief trains got a gradient, and no other: nothing trainable is unused.
    if kind != "eval":
        for name, p in model.named_parameters():
            assert (p.grad is not None) == brief_trainable(kind, name), name


def test_head_only_minipost_counts_exactly():
    """MiniPost with k = L and no top layers trains only the MLM head over a frozen body (the head
    a headless pretrained encoder needs before the standard baseline): no layer backward at all."""
    cfg = small_cfg(num_layers=K, mid_head_layer=None)
    torch.manual_seed(0)
    model = MLMEncoder(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head."))
    ids, labels = batch(cfg, 3, 19, 7)
    with FlopCounterMode(display=False) as fwd:
        loss = model(ids, labels=labels, route="final")["loss"]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    report = flops.step_flops(cfg, "minipost_top", 3, 19, 7, minipost_frozen_layers=K)
    assert (report.forward, report.backward) == (fwd.get_total_flops(), bwd.get_total_flops())
    # Backward: the dense layer's weight gradient and the decoder's input gradient, nothing else.
    assert report.backward == 2 * 7 * cfg.hidden_size ** 2 + 2 * 7 * cfg.hidden_size * cfg.vocab_size
    names = flops.set_requires_grad_for_step(model, "minipost_top", minipost_frozen_layers=K)
    assert all(n.startswith("lm_head.") for n in names) and names


@pytest.mark.parametrize("kind", flops.STEP_KINDS)
def test_library_freezing_matches_the_brief(kind):
    cfg = cfg_for(kind)
    model = MLMEncoder(cfg)
    head = {"finetune": lambda: flops.ClassificationHeadStandIn(cfg.hidden_size, 3),
            "finetune_qa": lambda: nn.Linear(cfg.hidden_size, 2)}.get(kind, lambda: None)()
    names = flops.set_requires_grad_for_step(model, kind, minipost_frozen_layers=K, task_head=head)
    head_names = {"task_head." + n for n, _ in head.named_parameters()} if head is not None else set()
    assert set(names) == {n for n, _ in model.named_parameters() if brief_trainable(kind, n)} | head_names
    # ... and the library's own measurement helper counts the same as the analytic report.
    fwd, bwd = flops.measure_step_flops(cfg, kind, 2, 9, 5, minipost_frozen_layers=K)
    report = flops.step_flops(cfg, kind, 2, 9, 5, minipost_frozen_layers=K)
    assert (fwd, bwd) == (report.forward, report.backward)


def test_the_subtle_input_gradients():
    """The cases the counter must get right from autograd's pruning, spelled out."""
    B, T, M = 3, 19, 7
    d = 48
    qkv_input_grad = 2 * B * T * d * 3 * d
    # MiniPost top: layer K+1's qkv weight trains but its input comes from a frozen layer: no
    # input-gradient for it (autograd never asks), but the out/MLP input-gradients do run.
    top = flops.step_flops(cfg_for("minipost_top"), "minipost_top", B, T, M, minipost_frozen_layers=K)
    both = 2 * B * T * d * 3 * d + 2 * B * T * d * d + 2 * 2 * B * T * d * 96
    assert top.components["attn_proj"].weight_grad == both - 2 * 2 * B * T * d * 96
    assert top.components["attn_proj"].input_grad == 2 * B * T * d * d  # out only, not qkv
    # Embedding-only adaptation: the gradient goes down to layer 1's input (qkv input-grad there
    # too); the only weight-gradient is the tied decoder's (the embedding backward is a scatter).
    full = flops.step_flops(cfg_for("adapt_full"), "adapt_full", B, T, M)
    assert full.components["attn_proj"].input_grad == 4 * (qkv_input_grad + 2 * B * T * d * d)
    assert full.weight_grad == 2 * M * d * 301
    # Finetune freezes the whole embedding module: nothing below layer 1 trains, so layer 1's
    # qkv input-gradient is the one backward matmul that does not run.
    ft = flops.step_flops(cfg_for("finetune"), "finetune", B, T, M)
    assert ft.backward == 2 * ft.forward - qkv_input_grad
    pre = flops.step_flops(cfg_for("pretrain"), "pretrain", B, T, M)
    assert pre.backward == 2 * pre.forward


@pytest.mark.parametrize("kind", ["pretrain", "minipost_top", "adapt_mini", "eval"])
def test_cpu_sdpa_gap(kind):
    """torch 2.13's FlopCounterMode counts 0 for CPU fused SDPA (no attention dropout): counted +
    our attention part == our total. With dropout in training the math path runs: exact again."""
    B, T, M = 3, 19, 7
    cfg = cfg_for(kind, attention="sdpa", attention_dropout=0.0)
    fwd, bwd, _, _ = run_counted(cfg, kind, B, T, M)
    report = flops.step_flops(cfg, kind, B, T, M, minipost_frozen_layers=K)
    attn = report.components["attn_scores"]
    assert attn.forward > 0
    assert fwd + attn.forward == report.forward
    assert bwd + attn.backward == report.backward
    assert fwd + bwd + attn.total == report.total
    if kind != "eval":
        fwd, bwd, _, _ = run_counted(cfg_for(kind, attention="sdpa", attention_dropout=0.1), kind, B, T, M)
        assert (fwd, bwd) == (report.forward, report.backward)


def test_cuda_sdpa_formulas_match_attention_part():
    """What FlopCounterMode charges the CUDA SDPA kernels (its registered formulas): our forward,
    and our backward plus the one recomputed q@k^T that we book as hardware-only."""
    B, T, d, h = 3, 19, 48, 4
    q = (B, h, T, d // h)
    cfg = small_cfg(attention="sdpa", num_layers=1, mid_head_layer=None)
    attn = flops.step_flops(cfg, "pretrain", B, T, 0).components["attn_scores"]
    assert sdpa_flop_count(q, q, q) == attn.forward
    assert sdpa_backward_flop_count(q, q, q, q) == attn.backward + attn.recompute
    assert attn.recompute == 2 * B * T * T * d


@pytest.mark.parametrize("weight_trainable", [True, False])
def test_chunked_head_counts_like_the_plain_head(weight_trainable):
    """The fused/chunked MLM head must cost what the plain F.linear + cross-entropy costs."""
    from ds_minimodel import kernels

    M, d, V = 6, 16, 2500
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, V, (M,), generator=g)
    counts = {}
    for impl in ("off", "torch"):
        h = torch.randn(M, d, generator=g).requires_grad_(True)
        w = torch.randn(V, d, generator=g).requires_grad_(weight_trainable)
        b = torch.zeros(V).requires_grad_(True)
        with FlopCounterMode(display=False) as fwd:
            loss = kernels.masked_lm_loss(h, w, b, labels, impl=impl)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        counts[impl] = (fwd.get_total_flops(), bwd.get_total_flops())
    assert counts["torch"] == counts["off"]
    assert counts["off"] == (2 * M * d * V, 2 * M * d * V * (2 if weight_trainable else 1))


@pytest.mark.parametrize("kind", ["pretrain_joint", "minipost_top", "adapt_mini", "adapt_full"])
def test_whole_step_with_chunked_kernels(kind):
    """kernels="torch" (vocabulary-chunked head, several chunks at V=3001): the counter sees the
    same step FLOPs as the plain head (the logits recompute is booked as hardware-only)."""
    cfg = cfg_for(kind, kernels="torch", vocab_size=3001)
    fwd, bwd = flops.measure_step_flops(cfg, kind, 3, 19, 7, minipost_frozen_layers=K)
    report = flops.step_flops(cfg, kind, 3, 19, 7, minipost_frozen_layers=K)
    assert (fwd, bwd) == (report.forward, report.backward)
    heads_run = sum(1 for h in ("mid_head", "final_head") if report.components[h].forward)
    assert report.recompute == heads_run * 2 * 7 * 48 * 3001  # one [M, d] @ [d, V] per head


def test_recompute_and_hardware_counts():
    B, T, M = 3, 19, 7
    cfg = cfg_for("minipost_top")
    plain = flops.step_flops(cfg, "minipost_top", B, T, M, minipost_frozen_layers=K)
    ckpt = flops.step_flops(cfg, "minipost_top", B, T, M, minipost_frozen_layers=K, recompute=True)
    assert ckpt.total == plain.total and plain.recompute == 0
    # Only the top layer is re-run: the frozen layers below every trainable weight get no backward.
    body = sum(plain.components[c].forward for c in ("attn_proj", "attn_scores", "mlp"))
    assert ckpt.recompute == body // (K + 1)
    assert ckpt.hardware_total == plain.total + ckpt.recompute
    assert flops.step_flops(cfg_for("eval"), "eval", B, T, M, recompute=True).recompute == 0
    # SDPA's score recompute and the fused head's logits recompute are hardware-only too.
    fused = flops.step_flops(cfg_for("adapt_mini", attention="sdpa", kernels="torch"), "adapt_mini", B, T, M)
    assert fused.total == flops.step_flops(cfg_for("adapt_mini"), "adapt_mini", B, T, M).total
    assert fused.recompute == K * 2 * B * T * T * 48 + 2 * M * 48 * 301


def test_deepspeed_profiler_estimate_matches_a_real_profiler_run():
    """deepspeed_profiler_estimate == DeepSpeed's FlopsProfiler on one forward, with and without
    the ZeRO-3 linear (which makes it count every linear layer twice)."""
    launcher = _launcher()
    linear = torch.nn.functional.linear
    B, T, M = 2, 9, 5
    for kind in flops.STEP_KINDS:
        for attention in ("explicit", "sdpa"):
            cfg = cfg_for(kind, attention=attention)
            step = flops.build_step(cfg, kind, B, T, M, minipost_frozen_layers=K)
            for zero3 in (False, True):
                est = flops.deepspeed_profiler_estimate(cfg, kind, B, T, M, minipost_frozen_layers=K, zero3=zero3)
                assert est.forward == launcher.run_deepspeed_profiler(step, zero3_linear=zero3), (kind, zero3)
            assert torch.nn.functional.linear is linear  # the ZeRO-3 swap was undone
    ours = flops.step_flops(cfg_for("adapt_mini"), "adapt_mini", B, T, M)
    est = flops.deepspeed_profiler_estimate(cfg_for("adapt_mini"), "adapt_mini", B, T, M, recompute_fwd_factor=1.0)
    assert est.step == 4 * est.forward and est.step > ours.total


def test_param_counts_and_six_n_rule_match_hugging_face():
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    cfg = small_cfg(mid_head_layer=None, max_positions=40)
    model = MLMEncoder(cfg)
    assert sum(p.numel() for p in model.parameters()) == sum(flops.param_counts(cfg).values())
    with_mid = small_cfg()
    assert sum(p.numel() for p in MLMEncoder(with_mid).parameters()) == sum(flops.param_counts(with_mid).values())
    hf = XLMRobertaForMaskedLM(XLMRobertaConfig(
        vocab_size=301, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=40, type_vocab_size=1))
    tokens = 3 * 19  # Trainer.floating_point_ops: 6 * input_ids.numel() * num_parameters(exclude_embeddings=True)
    hf_count = 6 * tokens * hf.num_parameters(exclude_embeddings=True)
    assert flops.six_n_rule(cfg, tokens, hf_tied_decoder_quirk=True) == hf_count
    # transformers 5.x keeps the tied word table (yielded as lm_head.decoder.weight) in the count;
    # the convention proper excludes it.
    assert flops.six_n_rule(cfg, tokens) == hf_count - 6 * tokens * 301 * 48


def test_report_api():
    r = flops.step_flops(small_cfg(), "pretrain_joint", 3, 19, 7)
    d = r.to_dict()
    assert d["total"] == r.total == r.forward + r.backward == r.input_grad + r.weight_grad + r.forward
    assert set(d["components"]) == set(flops.COMPONENTS)
    assert r.per_token == r.total / (3 * 19)
    assert r.components["mid_head"].total == r.components["final_head"].total > 0
    text = r.table()
    for title in flops.TITLES.values():
        assert title in text
    assert "per token" in text and "TOTAL" in text


def test_errors():
    with pytest.raises(UserError, match="unknown step kind"):
        flops.step_flops(small_cfg(), "adapt", 1, 8, 1)
    with pytest.raises(UserError, match="mid_head_layer"):
        flops.step_flops(small_cfg(mid_head_layer=None), "adapt_mini", 1, 8, 1)
    with pytest.raises(UserError, match="frozen layers"):
        flops.step_flops(small_cfg(), "minipost_top", 1, 8, 1, minipost_frozen_layers=5)
    with pytest.raises(UserError, match="num_masked"):
        flops.step_flops(small_cfg(), "pretrain", 1, 8, 9)


def test_peaks_and_utilisation():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == flops.PEAK_FLOPS["H100-SXM"]["bf16"]
    assert flops.peak_flops("NVIDIA H100 PCIe", "bf16") == flops.PEAK_FLOPS["H100-PCIe"]["bf16"]
    assert flops.peak_flops("NVIDIA H200 NVL", "fp32") == flops.PEAK_FLOPS["H200-NVL"]["fp32"]
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert flops.mfu(494.75e12, "H100:bf16") == pytest.approx(0.5)
    assert flops.hfu(1e12, 4e12) == 0.25
    with pytest.raises(UserError):
        flops.peak_flops("TPU v5", "bf16")
    r = flops.step_flops(small_cfg(), "pretrain", 3, 19, 7, recompute=True)
    assert r.hfu(1.0, 1e9) > r.mfu(1.0, 1e9) == r.total / 1e9
    assert flops.measure_cpu_peak(seconds=0.05, n=128) > 1e6


@pytest.mark.parametrize("name,layers,d,k", [("xlmr-base", 12, 768, 3), ("xlmr-large", 24, 1024, 6)])
def test_xlmr_configs_parse(name, layers, d, k):
    m = load_config(PretrainConfig, REPO / "configs" / f"{name}.yaml").model
    assert (m.num_layers, m.hidden_size, m.mid_head_layer, m.vocab_size, m.max_positions) == (layers, d, k, 250002, 514)
    assert m.intermediate_size == 4 * d and m.hidden_size // m.num_heads == 64


def _launcher():
    spec = importlib.util.spec_from_file_location("profile_flops", REPO / "launchers" / "profile_flops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_launcher_check_small(capsys):
    _launcher().main(["--config", str(REPO / "configs" / "xlmr-base.yaml"), "--step", "minipost_top",
                      "--check", "--check-scale", "small"])
    out = capsys.readouterr().out
    assert "6N rule" in out and "DeepSpeed profiler" in out and "per token" in out
    assert "MISMATCH" not in out and out.count("exact") == 3
    assert "MiniPost mini-model: 3 frozen + 1 top layers" in out


def test_launcher_user_errors(capsys, tmp_path):
    launcher = _launcher()
    with pytest.raises(SystemExit) as e:
        launcher.main(["--config", str(tmp_path / "missing.yaml"), "--step", "adapt_mini"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as e:
        launcher.main(["--config", str(REPO / "configs" / "xlmr-base.yaml"), "--step", "adapt_mini",
                       "--seq-len", "600"])
    assert e.value.code == 2 and "max_positions" in capsys.readouterr().err
