"""Step 1: MiniJoint pretraining (or plain MLM when no mid head is configured): the whole encoder
on source-language MLM, loss = final-head MLM + w * mid-head MLM after layer k."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ds_minimodel.config import ModelConfig, PretrainConfig
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.errors import UserError
from ds_minimodel.method.methods import FULL, MINIJOINT, MODEL_KIND
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.mlm_job import open_corpus, run_mlm_job
from ds_minimodel.training.engine import model_init_context


def resolve_vocab(model: ModelConfig, shards: TokenShards) -> ModelConfig:
    """Take the vocabulary size from the data, or refuse a model that doesn't match it."""
    if model.vocab_size is None:
        return dataclasses.replace(model, vocab_size=shards.vocab_size)
    if model.vocab_size != shards.vocab_size:
        raise UserError(f"model.vocab_size {model.vocab_size} does not match the tokenizer of {shards.path} "
                        f"({shards.vocab_size} pieces)")
    return model


def build_model(model_cfg: ModelConfig, ds_config: dict, seed: int) -> MLMEncoder:
    torch.manual_seed(seed)  # identical init on every rank and in a 1-process reference run
    with model_init_context(ds_config):
        return MLMEncoder(model_cfg)


def run(cfg: PretrainConfig, ds_config_path: str, resume: bool = False) -> Path:
    shards = open_corpus(cfg.data.path)
    cfg = dataclasses.replace(cfg, model=resolve_vocab(cfg.model, shards))
    joint = cfg.model.mini_depth is not None
    kind = MODEL_KIND[MINIJOINT] if joint else MODEL_KIND[FULL]

    def make_model(ds_config: dict) -> MLMEncoder:
        model = build_model(cfg.model, ds_config, cfg.train.seed)
        set_requires_grad_for_step(model, kind, freeze=cfg.train.freeze)
        return model

    # Route joint is route final when there is no mid head. The FLOP count honours train.freeze.
    return run_mlm_job(cfg, cfg.model, shards, ds_config_path, resume, make_model=make_model,
                       kind=kind, route="joint",
                       loss_keys=("loss", "final_loss", "mid_loss") if joint else ("loss", "final_loss"),
                       flops_kwargs={"freeze": list(cfg.train.freeze)})
