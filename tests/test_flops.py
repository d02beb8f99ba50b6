"""The analytic FLOP counter against the real thing, integer-exact.

Every step kind runs one forward + backward on a small model with explicit attention and the plain
MLM head, frozen as the brief of that step says (written out here, `brief_trainable`, independently
of step_rules.py), with a known number M of masked positions; `step_flops` must equal what torch's
FlopCounterMode counted, forward and backward separately. The models the pipeline steps really
build (their JobSpec, with run_job replaced by a recorder) are counted the same way, and the fused
MLM head, which FlopCounterMode cannot count (it misses the in-place addmm_), by a recorder of
every aten matrix product (`GemmRecorder`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from ds_minimodel.config import (
    ModelConfig,
    PretrainConfig,
    from_dict,
    load_config,
    to_dict,
)
from ds_minimodel.errors import UserError
from ds_minimodel.method import flops, flops_check
from ds_minimodel.method import rules as step_rules
from ds_minimodel.model import (
    IGNORE_INDEX,
    MLMEncoder,
    QuestionAnswering,
    SequenceClassifier,
)
from ds_minimodel.training import utilisation

REPO = Path(__file__).resolve().parents[1]
K = 2  # MiniJoint mid head / MiniPost frozen layers
SHAPES = [(3, 19, 7), (2, 11, 0), (1, 8, 8)]  # (batch, seq, masked): typical, no mask, all masked


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=301, hidden_size=48, num_layers=4, num_heads=4, intermediate_size=96,
                max_positions=40, mini_depth=K, attention="explicit", kernels="off")
    return ModelConfig(**(base | kw))


def cfg_for(kind: str, **kw) -> ModelConfig:
    """The model each kind runs: the MiniPost kinds K frozen layers + 1 new top layer; adapt_minijoint
    the MiniJoint mini-model (layers 1..K, the mid head become its lm_head); adapt_full the full
    model without its mid head (adapt.py drops it); the others the full MiniJoint model."""
    if kind in ("minipost_top", "adapt_minipost"):
        return small_cfg(num_layers=K + 1, mini_depth=None, **kw)
    if kind == "adapt_minijoint":
        return small_cfg(num_layers=K, mini_depth=None, **kw)
    if kind == "adapt_full":
        return small_cfg(mini_depth=None, **kw)
    return small_cfg(**kw)


def brief_trainable(kind: str, name: str, freeze=()) -> bool:
    """Who trains, as the step kinds are specified (independent of step_rules). The fine-tuning
    kinds name their parameters as SequenceClassifier / QuestionAnswering do (encoder.*, head)."""
    if any(fnmatch.fnmatchcase(name, p) for p in freeze):
        return False
    if kind in ("finetune", "finetune_qa"):  # the whole embedding module (layer norm too), the MLM heads
        return not name.startswith(("encoder.embeddings.", "encoder.lm_head.", "encoder.mid_head."))
    if kind == "pretrain":  # everything the route uses (route final: not the mid head)
        return not name.startswith("mid_head.")
    if kind == "pretrain_joint":
        return True
    if kind == "minipost_top":  # layers 1..K and embeddings frozen; layers K+1.. and lm_head train
        return (name.startswith("layers.") and int(name.split(".")[1]) >= K) or name.startswith("lm_head.")
    if kind in ("adapt_minijoint", "adapt_minipost", "adapt_full"):  # new word table + output bias
        return name in ("embeddings.word", "lm_head.bias")
    return False  # eval


def batch(cfg: ModelConfig, B: int, T: int, M: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(cfg.pad_token_id + 1, cfg.vocab_size, (B, T), generator=g)
    labels = torch.full((B * T,), IGNORE_INDEX)
    labels[torch.randperm(B * T, generator=g)[:M]] = torch.randint(0, cfg.vocab_size, (M,), generator=g)
    labels = labels.view(B, T)
    assert int(labels.ne(IGNORE_INDEX).sum()) == M
    return ids, labels


def model_for(cfg: ModelConfig, kind: str, num_classes: int = 3, freeze=()):
    """The model.py model of `kind`, frozen as the brief says."""
    torch.manual_seed(0)
    model = {"finetune": lambda: SequenceClassifier(cfg, num_classes),
             "finetune_qa": lambda: QuestionAnswering(cfg)}.get(kind, lambda: MLMEncoder(cfg))()
    for name, p in model.named_parameters():
        p.requires_grad_(brief_trainable(kind, name, freeze))
    return model


def run_counted(cfg: ModelConfig, kind: str, B: int, T: int, M: int, num_classes: int = 3, freeze=()):
    """One real step under FlopCounterMode: (forward, backward, model)."""
    model = model_for(cfg, kind, num_classes, freeze)
    ids, labels = batch(cfg, B, T, M)
    route = {"pretrain": "final", "pretrain_joint": "joint"}.get(kind, "final")
    with FlopCounterMode(display=False) as fwd:
        with torch.set_grad_enabled(kind != "eval"):
            if kind == "finetune":
                loss = model(ids, labels=torch.arange(B) % num_classes)["loss"]
            elif kind == "finetune_qa":  # span head on every token, mean of start and end CE
                loss = model(ids, start_positions=torch.arange(B) % T, end_positions=(torch.arange(B) + 1) % T)["loss"]
            else:
                loss = model(ids, labels=labels, route=route)["loss"]
    bwd_flops = 0
    if kind != "eval":
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        bwd_flops = bwd.get_total_flops()
    return fwd.get_total_flops(), bwd_flops, model


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", flops.STEP_KINDS)
def test_step_flops_equal_flop_counter_mode(kind, shape):
    B, T, M = shape
    cfg = cfg_for(kind)
    fwd, bwd, model = run_counted(cfg, kind, B, T, M)
    report = flops.step_flops(cfg, kind, B, T, M, mini_depth=K, num_classes=3)
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
    cfg = small_cfg(num_layers=K, mini_depth=None)
    torch.manual_seed(0)
    model = MLMEncoder(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head."))
    ids, labels = batch(cfg, 3, 19, 7)
    with FlopCounterMode(display=False) as fwd:
        loss = model(ids, labels=labels, route="final")["loss"]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    report = flops.step_flops(cfg, "minipost_top", 3, 19, 7, mini_depth=K)
    assert (report.forward, report.backward) == (fwd.get_total_flops(), bwd.get_total_flops())
    # Backward: the dense layer's weight gradient and the decoder's input gradient, nothing else.
    assert report.backward == 2 * 7 * cfg.hidden_size ** 2 + 2 * 7 * cfg.hidden_size * cfg.vocab_size
    names = step_rules.set_requires_grad_for_step(model, "minipost_top", mini_depth=K)
    assert all(n.startswith("lm_head.") for n in names) and names


@pytest.mark.parametrize("kind", flops.STEP_KINDS)
def test_library_freezing_matches_the_brief(kind):
    cfg = cfg_for(kind)
    model = model_for(cfg, kind)
    names = step_rules.set_requires_grad_for_step(model, kind, mini_depth=K)
    assert set(names) == {n for n, _ in model.named_parameters() if brief_trainable(kind, n)}
    assert set(names) == {n for n, p in model.named_parameters() if p.requires_grad}
    # ... and the library's own measurement helper counts the same as the analytic report.
    fwd, bwd = flops_check.measure_step_flops(cfg, kind, 2, 9, 5, mini_depth=K)
    report = flops.step_flops(cfg, kind, 2, 9, 5, mini_depth=K)
    assert (fwd, bwd) == (report.forward, report.backward)


def test_parameter_names_are_the_models():
    for cfg in (small_cfg(), small_cfg(mini_depth=None, num_layers=3), small_cfg(pad_token_id=20)):
        assert flops.encoder_parameter_names(cfg) == tuple(n for n, _ in MLMEncoder(cfg).named_parameters())
    state = torch.random.get_rng_state()
    flops.encoder_parameter_names(small_cfg(num_layers=7, mini_depth=3))  # a new structure: builds one
    assert torch.equal(torch.random.get_rng_state(), state)  # without touching the run's RNG


# --------------------------------------------------------------------------------------------
# train.freeze: any frozen set, whole layers or parts of them, counts exactly.

FREEZES = {
    "whole-layers": ["layers.0.*", "embeddings.*"],  # the bottom layer, embeddings and the tied decoder
    "attention-of-one-layer": ["layers.1.attention.*"],
    "biases-and-norms": ["*.bias", "*norm*"],
    "single-weights": ["layers.0.attention.qkv.weight", "layers.2.fc2.weight", "lm_head.dense.*"],
    "all-layers-but-one-norm": ["embeddings.*", "layers.[0-2].*", "layers.3.attention.*", "layers.3.fc*"],
    "heads": ["lm_head.*", "mid_head.*"],
    # Nothing below trains but one module of layer 1, so which input-gradients inside it run
    # depends on that module alone:
    "only-fc1-at-the-bottom": ["embeddings.*", "layers.0.attention*", "layers.0.fc2.*", "layers.0.mlp_norm.*"],
    "only-a-norm-at-the-bottom": ["embeddings.*", "layers.0.attention.*", "layers.0.fc*", "layers.0.mlp_norm.*"],
    "only-biases-at-the-bottom": ["embeddings.*", "layers.0.*.weight"],
    "only-out-at-the-bottom": ["embeddings.*", "layers.0.attention.qkv.*", "layers.0.attention_norm.*",
                               "layers.0.fc*", "layers.0.mlp_norm.*"],
    "only-mlp-norm-at-the-bottom": ["embeddings.*", "layers.0.attention*", "layers.0.fc*"],
    "only-the-head-norm": ["embeddings.*", "layers.*", "lm_head.dense.*", "lm_head.bias", "mid_head.*"],
}


@pytest.mark.parametrize("freeze", FREEZES.values(), ids=FREEZES.keys())
@pytest.mark.parametrize("kind", ["pretrain", "pretrain_joint"])
def test_freeze_patterns_count_exactly(kind, freeze):
    B, T, M = 3, 19, 7
    cfg = cfg_for(kind)
    fwd, bwd, model = run_counted(cfg, kind, B, T, M, freeze=freeze)
    report = flops.step_flops(cfg, kind, B, T, M, freeze=freeze)
    assert (report.forward, report.backward) == (fwd, bwd)
    # The patterns matter, except frozen biases and norms: their gradients are no matmul, and with
    # every weight trainable every product's gradients still run.
    fewer = report.backward < flops.step_flops(cfg, kind, B, T, M).backward
    assert fewer == (freeze != FREEZES["biases-and-norms"])
    trainable = step_rules.set_requires_grad_for_step(model, kind, freeze=freeze)
    assert set(trainable) == {n for n, _ in model.named_parameters() if brief_trainable(kind, n, freeze)}


def test_freeze_patterns_are_checked():
    with pytest.raises(UserError, match="layers.9.*"):
        flops.step_flops(small_cfg(), "pretrain_joint", 1, 8, 1, freeze=["layers.9.*"])
    with pytest.raises(UserError, match="layers.9.*"):
        step_rules.set_requires_grad_for_step(MLMEncoder(small_cfg()), "pretrain_joint", freeze=["layers.9.*"])
    with pytest.raises(UserError, match="MLM step kinds only"):
        flops.step_flops(small_cfg(), "finetune", 1, 8, 0, freeze=["layers.0.*"])


# --------------------------------------------------------------------------------------------
# The models the pipeline steps really build, counted on a batch of their real loader.


@pytest.fixture(scope="module")
def source_dir(tiny_corpus, tmp_path_factory):
    """A 4-layer MiniJoint model directory (mid head after layer 2) with the tiny corpus's
    tokenizer; explicit attention and the plain MLM head, what FlopCounterMode counts exactly."""
    from ds_minimodel.artefacts.modeldir import write_model_dir
    from ds_minimodel.steps.pretrain import open_corpus

    shards = open_corpus(str(tiny_corpus))
    cfg = ModelConfig(vocab_size=shards.vocab_size, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                      max_positions=66, mini_depth=K, attention="explicit", kernels="off")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("flops_source") / "final"
    write_model_dir(out, MLMEncoder(cfg).state_dict(), {"model": to_dict(cfg)}, {"kind": "pretrain"},
                    str(Path(shards.path) / shards.index["tokenizer"]))
    return out


def job_spec(monkeypatch, module: str, config_cls: str, config_file: str, *overrides):
    """The JobSpec step `module` builds for the config, its run_job replaced by a recorder."""
    from ds_minimodel import config
    from ds_minimodel.steps import mlm_job
    from ds_minimodel.steps.finetune import classification, qa

    specs = []

    def record(cfg, spec, ds_config_path, resume):
        specs.append(spec)
        return Path(cfg.train.out_dir)

    for mod in (mlm_job, classification, qa):
        monkeypatch.setattr(mod, "run_job", record)
    cfg = load_config(getattr(config, config_cls), REPO / config_file, list(overrides))
    importlib.import_module(f"ds_minimodel.steps.{module}").run(cfg, str(REPO / "ds_configs/z0.json"))
    (spec,) = specs
    return spec


def check_real_step(spec, *, num_classes: int = 2, mini_depth=None, freeze=(), micro_batch: int = 3):
    """One step of the spec's model on its loader's first micro-batch, under FlopCounterMode,
    against step_flops and the job's own per-micro-batch count; returns the model."""
    cfg = from_dict(ModelConfig, spec.model_config)
    model = spec.make_model({})
    micro = spec.make_loader(micro_batch, 1, 0, 1).next_step()[0]
    with FlopCounterMode(display=False) as fwd:
        loss = model(**micro, **(spec.forward_kwargs or {}))["loss"]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    B, T = micro["input_ids"].shape
    M = int(micro["labels"].ne(IGNORE_INDEX).sum()) if micro["labels"].dim() == 2 else 0
    assert spec.kind not in ("finetune", "finetune_qa") or M == 0
    report = flops.step_flops(cfg, spec.kind, B, T, M, mini_depth=mini_depth, num_classes=num_classes,
                              freeze=freeze)
    assert (report.forward, report.backward) == (fwd.get_total_flops(), bwd.get_total_flops())
    assert spec.micro_flops(micro) == report.total  # what the job logs (and divides for MFU)
    # What the step leaves trainable is what the rule says, and each of those gets a gradient.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == {n for n, _ in model.named_parameters()
                         if step_rules.is_trainable(n, spec.kind, mini_depth=mini_depth, freeze=freeze)}
    assert trainable == {n for n, _ in model.named_parameters() if brief_trainable_real(spec.kind, n, mini_depth,
                                                                                          freeze)}
    return model


def brief_trainable_real(kind: str, name: str, k, freeze) -> bool:
    """brief_trainable for the real models (MiniPost's k is the run's)."""
    if kind == "minipost_top":
        return (name.startswith("layers.") and int(name.split(".")[1]) >= k) or name.startswith("lm_head.")
    return brief_trainable(kind, name, freeze)


@pytest.mark.parametrize("freeze", [[], FREEZES["whole-layers"], FREEZES["attention-of-one-layer"]],
                         ids=["none", "whole-layers", "part-of-a-layer"])
def test_real_pretraining_step(monkeypatch, tiny_corpus, tmp_path, freeze):
    """pretrain.py's model (MiniJoint, pretrain-tiny.yaml) with train.freeze: the count honours it."""
    spec = job_spec(monkeypatch, "pretrain", "PretrainConfig", "configs/pretrain-tiny.yaml", f"data.path={tiny_corpus}",
                    f"train.out_dir={tmp_path / 'run'}", "model.attention=explicit", "model.kernels='off'",
                    "train.freeze=[" + ",".join(f'"{p}"' for p in freeze) + "]")
    assert spec.kind == "pretrain_joint"
    model = check_real_step(spec, freeze=freeze)
    assert model.embeddings.word.requires_grad == (freeze != FREEZES["whole-layers"])


def test_real_minipost_step(monkeypatch, source_dir, tiny_corpus, tmp_path):
    spec = job_spec(monkeypatch, "minipost", "MiniPostConfig", "tests/fixtures/minipost-tiny.yaml", f"minipost.source={source_dir}",
                    f"data.path={tiny_corpus}", f"train.out_dir={tmp_path / 'run'}", f"minipost.mini_depth={K}", "minipost.top_layers=1")
    assert spec.kind == "minipost_top" and spec.model_config["num_layers"] == K + 1
    check_real_step(spec, mini_depth=K)


@pytest.fixture(scope="module")
def minipost_dir(source_dir, tmp_path_factory):
    """A MiniPost model directory (K frozen + 1 top layer) over source_dir, as minipost.py's
    finalize lays it out."""
    from ds_minimodel.artefacts.modeldir import (
        body_fingerprints,
        read_model_dir,
        write_model_dir,
    )
    from ds_minimodel.artefacts.surgery import build_minipost

    state, cfg, lineage = read_model_dir(source_dir)
    fresh = MLMEncoder(dataclasses.replace(cfg, num_layers=K + 1, mini_depth=None)).state_dict()
    mini, mini_cfg = build_minipost(state, cfg, K, 1, "copy", fresh)
    out = tmp_path_factory.mktemp("flops_minipost") / "final"
    write_model_dir(out, mini, {"model": to_dict(mini_cfg)},
                    {"kind": "minipost", "mini_depth": K, "top_layers": 1, "source": str(source_dir),
                     "source_layers": cfg.num_layers, "body_fingerprints": body_fingerprints(state, cfg, K)},
                    lineage["tokenizer"])
    return out


@pytest.mark.parametrize("through,kind,layers", [("full", "adapt_full", 4), ("mini", "adapt_minijoint", K),
                                                 ("minipost", "adapt_minipost", K + 1)])
def test_real_adaptation_step(monkeypatch, source_dir, minipost_dir, tiny_target_corpus, tmp_path, through, kind,
                              layers):
    """adapt.py's model for each body: the step kind says which, the count is that model's."""
    model_dir = minipost_dir if through == "minipost" else source_dir
    spec = job_spec(monkeypatch, "adapt", "AdaptConfig", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={model_dir}",
                    f"data.path={tiny_target_corpus}", f"train.out_dir={tmp_path / 'run'}",
                    f"adapt.through={'full' if through == 'full' else 'mini'}", "adapt.language=ny")
    assert spec.kind == kind
    assert (spec.model_config["num_layers"], spec.model_config["mini_depth"]) == (layers, None)
    check_real_step(spec)


def test_real_finetuning_step(monkeypatch, source_dir, tmp_path):
    """finetune.py's SequenceClassifier (not a stand-in head) on its own padded batches."""
    spec = job_spec(monkeypatch, "finetune", "FinetuneConfig", "tests/fixtures/finetune-tiny.yaml",
                    f"finetune.model_dir={source_dir}", f"train.out_dir={tmp_path / 'run'}")
    assert spec.kind == "finetune"
    model = spec.make_model({})
    assert isinstance(model, SequenceClassifier)
    check_real_step(spec, num_classes=model.out.out_features)


def test_the_subtle_input_gradients():
    """The cases the counter must get right from autograd's pruning, spelled out."""
    B, T, M = 3, 19, 7
    d = 48
    qkv_input_grad = 2 * B * T * d * 3 * d
    # MiniPost top: layer K+1's qkv weight trains but its input comes from a frozen layer: no
    # input-gradient for it (autograd never asks), but the out/MLP input-gradients do run.
    top = flops.step_flops(cfg_for("minipost_top"), "minipost_top", B, T, M, mini_depth=K)
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


@pytest.mark.parametrize("kind", ["pretrain", "minipost_top", "adapt_minijoint", "eval"])
def test_cpu_sdpa_gap(kind):
    """torch 2.13's FlopCounterMode counts 0 for CPU fused SDPA (no attention dropout): counted +
    our attention part == our total. With dropout in training the math path runs: exact again."""
    B, T, M = 3, 19, 7
    cfg = cfg_for(kind, attention="sdpa", attention_dropout=0.0)
    fwd, bwd, _ = run_counted(cfg, kind, B, T, M)
    report = flops.step_flops(cfg, kind, B, T, M, mini_depth=K)
    attn = report.components["attn_scores"]
    assert attn.forward > 0
    assert fwd + attn.forward == report.forward
    assert bwd + attn.backward == report.backward
    assert fwd + bwd + attn.total == report.total
    if kind != "eval":
        fwd, bwd, _ = run_counted(cfg_for(kind, attention="sdpa", attention_dropout=0.1), kind, B, T, M)
        assert (fwd, bwd) == (report.forward, report.backward)


def test_cuda_sdpa_formulas_match_attention_part():
    """What FlopCounterMode charges the CUDA SDPA kernels (its registered formulas): our forward,
    and our backward plus the one recomputed q@k^T that we book as hardware-only."""
    B, T, d, h = 3, 19, 48, 4
    q = (B, h, T, d // h)
    cfg = small_cfg(attention="sdpa", num_layers=1, mini_depth=None)
    attn = flops.step_flops(cfg, "pretrain", B, T, 0).components["attn_scores"]
    assert sdpa_flop_count(q, q, q) == attn.forward
    assert sdpa_backward_flop_count(q, q, q, q) == attn.backward + attn.recompute
    assert attn.recompute == 2 * B * T * T * d


# --------------------------------------------------------------------------------------------
# The fused MLM head, GEMM by GEMM.

aten = torch.ops.aten
_GEMM_OPERANDS = {aten.mm: (0, 1), aten.bmm: (0, 1), aten.addmm: (1, 2), aten.addmm_: (1, 2),
                  aten.baddbmm: (1, 2), aten.baddbmm_: (1, 2)}


def _called_from(function: str, module_file: str) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == function and frame.f_code.co_filename.endswith(module_file):
            return True
        frame = frame.f_back
    return False


class GemmRecorder(TorchDispatchMode):
    """Every matrix product aten runs (mm, addmm, bmm, baddbmm, the in-place addmm_/baddbmm_
    and the out= variants) at 2*m*k*n FLOPs per batch entry, noting those that chunked.py's
    logits GEMM (`_chunk_logits`) issued. (FlopCounterMode has no formula for addmm_, so it
    cannot count the chunked head's d hidden accumulation.)"""

    def __init__(self):
        super().__init__()
        self.calls = []  # (op name, FLOPs, issued by the chunked logits GEMM)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        operands = _GEMM_OPERANDS.get(func.overloadpacket)
        if operands is not None:
            a, b = (args[i] for i in operands)
            *batch, m, k = a.shape
            self.calls.append((func.overloadpacket.__name__, 2 * math.prod(batch) * m * k * b.shape[-1],
                               _called_from("_chunk_logits", "chunked.py")))
        return func(*args, **(kwargs or {}))

    def total(self, *, logits: bool | None = None) -> int:
        """FLOPs of all products, or of those issued (True) / not issued (False) by _chunk_logits."""
        return sum(f for _, f, from_logits in self.calls if logits is None or from_logits == logits)


def recorded_step(model, kind: str, ids, labels) -> tuple[GemmRecorder, GemmRecorder]:
    route = {"pretrain": "final", "pretrain_joint": "joint"}.get(kind, "final")
    with GemmRecorder() as fwd:
        loss = model(ids, labels=labels, route=route)["loss"]
    with GemmRecorder() as bwd:
        loss.backward()
    return fwd, bwd


@pytest.mark.parametrize("weight_trainable", [True, False])
def test_chunked_head_model_and_hardware_flops(weight_trainable):
    """The chunked head (kernels="torch", 3 vocabulary chunks) runs the plain head's model FLOPs
    (logits forward; d hidden and, for a trainable tied weight, d weight in backward) plus one
    hardware-only GEMM: the logits recomputed chunk by chunk in backward."""
    from ds_minimodel import kernels

    M, d, V = 6, 16, 2500
    logits = 2 * M * d * V  # one [M, d] @ [d, V]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, V, (M,), generator=g)
    h0, w0 = torch.randn(M, d, generator=g), torch.randn(V, d, generator=g)
    for impl, recomputed in (("off", 0), ("torch", logits)):
        h = h0.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(weight_trainable)
        b = torch.zeros(V).requires_grad_(True)
        with GemmRecorder() as fwd:
            loss = kernels.masked_lm_loss(h, w, b, labels, impl=impl, chunk_size=1024)
        with GemmRecorder() as bwd:
            loss.backward()
        assert fwd.total() == logits, impl  # model FLOPs, forward
        assert bwd.total(logits=False) == logits * (2 if weight_trainable else 1), impl  # model FLOPs, backward
        assert bwd.total(logits=True) == recomputed, impl  # hardware only
        if impl == "torch":  # d hidden accumulates chunk by chunk in place: what FlopCounterMode misses
            assert sum(f for op, f, _ in bwd.calls if op == "addmm_") == logits


@pytest.mark.parametrize("strategy", ["vocab", "rows", "auto"])
@pytest.mark.parametrize("kind", ["pretrain_joint", "minipost_top", "adapt_minijoint", "adapt_full"])
def test_whole_step_with_chunked_kernels(kind, strategy):
    """kernels="torch" (vocabulary-chunked head, 3 chunks at V=3001), every GEMM of a real step
    counted: the model FLOPs are step_flops' total (as the plain head's). The "vocab" strategy
    recomputes the logits GEMM in backward, one [M, d] @ [d, V] per head run (hardware_total);
    "rows" (what "auto" is on CPU) computes the head's gradients in forward, from kept logits:
    no recompute, the same total."""
    B, T, M = 3, 19, 7
    cfg = cfg_for(kind, kernels="torch", vocab_size=3001, head_strategy=strategy)
    ids, labels = batch(cfg, B, T, M)
    fwd, bwd = recorded_step(model_for(cfg, kind), kind, ids, labels)
    report = flops.step_flops(cfg, kind, B, T, M, mini_depth=K)
    heads_run = 2 if kind == "pretrain_joint" else 1
    if strategy == "vocab":
        assert fwd.total() == report.forward
        assert bwd.total(logits=False) == report.backward  # model FLOPs: no recompute
        assert fwd.total() + bwd.total(logits=False) == report.total
        assert bwd.total(logits=True) == report.recompute == heads_run * 2 * M * 48 * 3001  # hardware only
    else:
        assert fwd.total(logits=True) == heads_run * 2 * M * 48 * 3001  # each head's logits, once
        assert bwd.total(logits=True) == report.recompute == 0
        assert fwd.total() + bwd.total() == report.total  # the head's backward GEMMs ran in forward
    assert fwd.total() + bwd.total() == report.hardware_total
    # The recorder counts what FlopCounterMode counts where that one is exact (the plain head).
    plain = cfg_for(kind, kernels="off", vocab_size=3001)
    fwd_off, bwd_off = recorded_step(model_for(plain, kind), kind, ids, labels)
    counted_fwd, counted_bwd, _ = run_counted(plain, kind, B, T, M)
    assert (fwd_off.total(), bwd_off.total()) == (counted_fwd, counted_bwd) == (report.forward, report.backward)


def test_recompute_and_hardware_counts():
    B, T, M = 3, 19, 7
    cfg = cfg_for("minipost_top")
    plain = flops.step_flops(cfg, "minipost_top", B, T, M, mini_depth=K)
    ckpt = flops.step_flops(cfg, "minipost_top", B, T, M, mini_depth=K, recompute=True)
    assert ckpt.total == plain.total and plain.recompute == 0
    # Only the top layer is re-run: the frozen layers below every trainable weight get no backward.
    body = sum(plain.components[c].forward for c in ("attn_proj", "attn_scores", "mlp"))
    assert ckpt.recompute == body // (K + 1)
    assert ckpt.hardware_total == plain.total + ckpt.recompute
    assert flops.step_flops(cfg_for("eval"), "eval", B, T, M, recompute=True).recompute == 0
    # SDPA's score recompute and the fused head's logits recompute are hardware-only too.
    fused = flops.step_flops(cfg_for("adapt_minijoint", attention="sdpa", kernels="torch", head_strategy="vocab"),
                             "adapt_minijoint", B, T, M)
    assert fused.total == flops.step_flops(cfg_for("adapt_minijoint"), "adapt_minijoint", B, T, M).total
    assert fused.recompute == K * 2 * B * T * T * 48 + 2 * M * 48 * 301
    rows = flops.step_flops(cfg_for("adapt_minijoint", attention="sdpa", kernels="torch", head_strategy="rows"),
                            "adapt_minijoint", B, T, M)
    assert rows.total == fused.total and rows.recompute == K * 2 * B * T * T * 48  # no logits recompute


def test_deepspeed_profiler_estimate_matches_a_real_profiler_run():
    """deepspeed_profiler_estimate == DeepSpeed's FlopsProfiler on one forward, with and without
    the ZeRO-3 linear (which makes it count every linear layer twice)."""
    launcher = _launcher()
    linear = torch.nn.functional.linear
    B, T, M = 2, 9, 5
    for kind in flops.STEP_KINDS:
        for attention in ("explicit", "sdpa"):
            cfg = cfg_for(kind, attention=attention)
            step = flops_check.build_step(cfg, kind, B, T, M, mini_depth=K)
            for zero3 in (False, True):
                est = flops_check.deepspeed_profiler_estimate(cfg, kind, B, T, M, mini_depth=K, zero3=zero3)
                assert est.forward == launcher.run_deepspeed_profiler(step, zero3_linear=zero3), (kind, zero3)
            assert torch.nn.functional.linear is linear  # the ZeRO-3 swap was undone
    ours = flops.step_flops(cfg_for("adapt_minijoint"), "adapt_minijoint", B, T, M)
    est = flops_check.deepspeed_profiler_estimate(cfg_for("adapt_minijoint"), "adapt_minijoint", B, T, M, recompute_fwd_factor=1.0)
    assert est.step == 4 * est.forward and est.step > ours.total


def test_param_counts_and_six_n_rule_match_hugging_face():
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    cfg = small_cfg(mini_depth=None, max_positions=40)
    model = MLMEncoder(cfg)
    assert sum(p.numel() for p in model.parameters()) == sum(flops_check.param_counts(cfg).values())
    with_mid = small_cfg()
    assert sum(p.numel() for p in MLMEncoder(with_mid).parameters()) == sum(flops_check.param_counts(with_mid).values())
    hf = XLMRobertaForMaskedLM(XLMRobertaConfig(
        vocab_size=301, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=40, type_vocab_size=1))
    tokens = 3 * 19  # Trainer.floating_point_ops: 6 * input_ids.numel() * num_parameters(exclude_embeddings=True)
    hf_count = 6 * tokens * hf.num_parameters(exclude_embeddings=True)
    assert flops_check.six_n_rule(cfg, tokens, hf_tied_decoder_quirk=True) == hf_count
    # transformers 5.x keeps the tied word table (yielded as lm_head.decoder.weight) in the count;
    # the convention proper excludes it.
    assert flops_check.six_n_rule(cfg, tokens) == hf_count - 6 * tokens * 301 * 48


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
    with pytest.raises(UserError, match="mini_depth"):
        flops.step_flops(small_cfg(mini_depth=None), "pretrain_joint", 1, 8, 1)
    with pytest.raises(UserError, match="minijoint_config"):  # adapt_minijoint runs the carved mini-model
        flops.step_flops(small_cfg(), "adapt_minijoint", 1, 8, 1)
    with pytest.raises(UserError, match="mini_depth"):
        flops.minijoint_config(small_cfg(mini_depth=None))
    with pytest.raises(UserError, match="frozen layers"):
        flops.step_flops(small_cfg(), "minipost_top", 1, 8, 1, mini_depth=5)
    with pytest.raises(UserError, match="num_masked"):
        flops.step_flops(small_cfg(), "pretrain", 1, 8, 9)


def test_peaks_and_utilisation():
    assert utilisation.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == utilisation.PEAK_FLOPS["H100-SXM"]["bf16"]
    assert utilisation.peak_flops("NVIDIA H100 PCIe", "bf16") == utilisation.PEAK_FLOPS["H100-PCIe"]["bf16"]
    assert utilisation.peak_flops("NVIDIA H200 NVL", "fp32") == utilisation.PEAK_FLOPS["H200-NVL"]["fp32"]
    assert utilisation.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert utilisation.mfu(494.75e12, "H100:bf16") == pytest.approx(0.5)
    assert utilisation.hfu(1e12, 4e12) == 0.25
    with pytest.raises(UserError):
        utilisation.peak_flops("TPU v5", "bf16")
    r = flops.step_flops(small_cfg(), "pretrain", 3, 19, 7, recompute=True)
    assert utilisation.hfu(r.hardware_total / 1.0, 1e9) > utilisation.mfu(r.total / 1.0, 1e9) == r.total / 1e9
    assert utilisation.measure_cpu_peak(seconds=0.05, n=128) > 1e6


@pytest.mark.parametrize("name,layers,d,k", [("pretrain-xlmr-base", 12, 768, 3), ("pretrain-xlmr-large", 24, 1024, 6)])
def test_xlmr_configs_parse(name, layers, d, k):
    m = load_config(PretrainConfig, REPO / "configs" / f"{name}.yaml").model
    assert (m.num_layers, m.hidden_size, m.mini_depth, m.vocab_size, m.max_positions) == (layers, d, k, 250002, 514)
    assert m.intermediate_size == 4 * d and m.hidden_size // m.num_heads == 64


def _launcher():
    return importlib.import_module("ds_minimodel.cli.profile_flops")  # launchers/profile_flops.py runs it


def test_launcher_check_small(capsys):
    _launcher().main(["--config", str(REPO / "configs" / "pretrain-xlmr-base.yaml"), "--step", "minipost_top",
                      "--check", "--check-scale", "small"])
    out = capsys.readouterr().out
    assert "6N rule" in out and "DeepSpeed profiler" in out and "per token" in out
    assert "MISMATCH" not in out and out.count("exact") == 3
    assert "MiniPost mini-model: 3 frozen + 1 top layers" in out


@pytest.mark.parametrize("step,model", [("adapt_minijoint", "L=3 "), ("adapt_full", "L=12 "), ("finetune", "L=12 ")])
def test_launcher_profiles_the_model_the_step_runs(capsys, step, model):
    _launcher().main(["--config", str(REPO / "configs" / "pretrain-xlmr-base.yaml"), "--step", step,
                      "--check", "--check-scale", "small"])
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and out.count("exact") == 3
    assert f"step {step}:" in out and model in out.splitlines()[0]
    if step == "adapt_minijoint":
        assert "(MiniJoint mini-model: layers 1..3 + mid head)" in out


def test_launcher_honours_train_freeze(capsys):
    """A pretraining config with train.freeze is counted (and checked) with those parameters frozen."""
    args = ["--config", str(REPO / "configs" / "pretrain-xlmr-base.yaml"), "--step", "pretrain_joint", "--json"]
    _launcher().main(args)
    plain = json.loads(capsys.readouterr().out)
    _launcher().main(args + ['train.freeze=["layers.0.*","embeddings.*"]'])
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["forward"] == plain["forward"] and frozen["backward"] < plain["backward"]
    _launcher().main(args[:-1] + ["--check", "--check-scale", "small", 'train.freeze=["layers.1.fc1.*"]'])
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "train.freeze layers.1.fc1.*" in out


def test_launcher_user_errors(capsys, tmp_path):
    launcher = _launcher()
    with pytest.raises(SystemExit) as e:
        launcher.main(["--config", str(tmp_path / "missing.yaml"), "--step", "adapt_minijoint"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as e:
        launcher.main(["--config", str(REPO / "configs" / "pretrain-xlmr-base.yaml"), "--step", "adapt_minijoint",
                       "--seq-len", "600"])
    assert e.value.code == 2 and "max_positions" in capsys.readouterr().err
