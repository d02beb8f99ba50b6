"""Configs (every shipped file parses; YAML < dotlist) and model losses against full-logit math."""

import json

import pytest
import torch
import torch.nn.functional as F

from ds_minimodel.config import ConfigError, ModelConfig, PretrainConfig, load_config
from ds_minimodel.errors import UserError
from ds_minimodel.model import MLMEncoder
from ds_minimodel.training.engine import resolve_ds_config
from tests.conftest import REPO
from tests.helpers import assert_close_fp32


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "tests/fixtures").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    from ds_minimodel import config

    step_config = {"pretrain": PretrainConfig, "minipost": config.MiniPostConfig, "adapt": config.AdaptConfig,
                   "finetune": config.FinetuneConfig}
    step, _, profile = path.stem.partition("-")
    assert step in step_config and profile, f"{path.name} is not named {{step}}-{{profile}}.yaml"
    cls = step_config[step]
    cfg = load_config(cls, path)
    if cls is PretrainConfig:
        assert cfg.model.hidden_size % cfg.model.num_heads == 0


@pytest.mark.parametrize("path", sorted((REPO / "ds_configs").glob("*.json")), ids=lambda p: p.name)
@pytest.mark.parametrize("world", [1, 2, 8])
def test_every_deepspeed_config_resolves(path, world):
    cfg = resolve_ds_config(json.loads(path.read_text()), world)
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world


def test_dotlist_overrides_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: {hidden_size: 64, num_heads: 4}\ntrain: {steps: 5}\n")
    cfg = load_config(PretrainConfig, y, ["train.steps=9", "model.mini_depth=2", "optim.lr=1e-4"])
    assert (cfg.model.hidden_size, cfg.train.steps, cfg.model.mini_depth, cfg.optim.lr) == (64, 9, 2, 1e-4)


def test_ds_batch_triple_derivation():
    assert resolve_ds_config({"train_batch_size": 32, "gradient_accumulation_steps": 2}, 4)[
        "train_micro_batch_size_per_gpu"] == 4
    with pytest.raises(UserError, match="not divisible"):
        resolve_ds_config({"train_batch_size": 30, "gradient_accumulation_steps": 2}, 4)
    # YAML micro/accum win and train_batch_size follows the world size.
    assert resolve_ds_config({"train_batch_size": 7}, 2, micro_batch_size=3, grad_accum=1)["train_batch_size"] == 6


def test_config_error_is_a_user_error():
    with pytest.raises(ConfigError):
        load_config(PretrainConfig, None, ["model.num_heads=5", "model.hidden_size=32"])


@pytest.mark.parametrize("cls, section, fields", [
    ("MiniPostConfig", "minipost", {"source": "runs/x", "mini_depth": 3, "top_layers": 2, "top_init": "random"}),
    ("AdaptConfig", "adapt", {"model_dir": "runs/x", "through": "full", "language": "sw", "init": "random"}),
    ("FinetuneConfig", "finetune", {"model_dir": "runs/x", "task": "bible-genre", "max_len": 64, "pooling": "mean"}),
])
def test_step_settings_have_their_own_section(cls, section, fields):
    """Every step's config is sectioned like PretrainConfig's: its own settings under the step's
    name. A flat key (the layout before sections) is refused with where it went; a saved config
    of that layout (a run made before) is still read, into the section."""
    from ds_minimodel import config

    cls = getattr(config, cls)
    cfg = load_config(cls, None, [f"{section}.{k}={v}" for k, v in fields.items()])
    assert {k: getattr(getattr(cfg, section), k) for k in fields} == fields
    key = next(iter(fields))
    with pytest.raises(ConfigError, match=f"unknown key {key} .*it is {section}.{key} now"):
        load_config(cls, None, [f"{key}={fields[key]}"])
    saved = config.to_dict(cfg)
    flat = {**{k: v for k, v in saved.items() if k != section}, **saved[section]}
    assert config.from_dict(cls, flat) == cfg


def _full_logit_loss(head, hidden, labels):
    """Hugging Face's way: logits for every position, then CE ignoring -100."""
    logits = head(hidden)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("kernels", ["off", "auto"])
def test_minijoint_loss_is_final_plus_weighted_mid(kernels):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                      hidden_dropout=0.0, attention_dropout=0.0, mini_depth=1, mid_head_weight=0.7,
                      kernels=kernels)
    model = MLMEncoder(cfg)
    ids = torch.randint(5, 97, (3, 11))
    labels = torch.full_like(ids, -100)
    labels[:, 2::3] = ids[:, 2::3]
    out = model(ids, labels=labels, route="joint")
    states = model.encode(ids)
    final = _full_logit_loss(model.lm_head, states[-1], labels)
    mid = _full_logit_loss(model.mid_head, states[1], labels)
    # Both sides see the same hidden states (the same ops on the same input); they differ in the
    # head only: one stage whose longest sum is the 97-term softmax (tests/helpers.py).
    head = dict(depth=1, reduction=97)
    assert_close_fp32(out["final_loss"], final, **head, what="final loss")
    assert_close_fp32(out["mid_loss"], mid, **head, what="mid loss")
    assert_close_fp32(out["loss"], final + 0.7 * mid, **head, what="joint loss")
    # route "mid" runs only layers 1..k: it must not touch layers above k.
    mini = model(ids, labels=labels, route="mid")
    assert_close_fp32(mini["loss"], mid, **head, what="route mid loss")
    mini["loss"].backward()
    assert model.layers[1].fc1.weight.grad is None and model.layers[0].fc1.weight.grad is not None
