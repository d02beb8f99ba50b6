"""Step 1: MiniJoint pretraining (or plain MLM when no mid head is configured), and the MLM job
that MiniPost and adaptation reuse."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import torch

from ds_minimodel import train as loop
from ds_minimodel.checkpoint import Checkpointer, export
from ds_minimodel.config import ModelConfig, PretrainConfig, to_dict
from ds_minimodel.data.loader import MLMLoader, eval_batches
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.engine import model_init_context
from ds_minimodel.errors import UserError
from ds_minimodel.job import JobSpec, run_job
from ds_minimodel.model import MLMEncoder
from ds_minimodel.step_rules import set_requires_grad_for_step


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
    joint = cfg.model.mid_head_layer is not None
    kind = "pretrain_joint" if joint else "pretrain"

    def make_model(ds_config: dict) -> MLMEncoder:
        model = build_model(cfg.model, ds_config, cfg.train.seed)
        set_requires_grad_for_step(model, kind, freeze=cfg.train.freeze)
        return model

    # Route joint is route final when there is no mid head. The FLOP count honours train.freeze.
    return run_mlm_job(cfg, cfg.model, shards, ds_config_path, resume, make_model=make_model,
                       kind=kind, route="joint",
                       loss_keys=("loss", "final_loss", "mid_loss") if joint else ("loss", "final_loss"),
                       flops_kwargs={"freeze": list(cfg.train.freeze)})


def open_corpus(path: str) -> TokenShards:
    shards = TokenShards.open(path)
    for split in ("train", "valid"):
        shards.split_info(split)
    return shards


def run_mlm_job(cfg, model_cfg: ModelConfig, shards: TokenShards, ds_config_path: str, resume: bool, *,
                make_model: Callable[[dict], torch.nn.Module], kind: str, route: str, loss_keys: tuple[str, ...],
                finalize: Callable[[Path, Checkpointer], None] | None = None, flops_kwargs: dict | None = None) -> Path:
    """An MLM job (pretraining, MiniPost top, adaptation): masked batches of `cfg.data`, validation
    MLM loss of every head, and by default a consolidated model directory + HF export in final/."""

    def make_loader(mb: int, ga: int, rank: int, world: int) -> MLMLoader:
        return MLMLoader(shards, "train", cfg.data.seq_len, mb, ga, rank, world, cfg.train.seed, cfg.data.mask_prob)

    def make_evaluate(engine, dist):
        per_rank = math.ceil(cfg.data.eval_batches / dist.world_size)
        if not per_rank:
            return None
        valid = eval_batches(shards, "valid", cfg.data.seq_len, cfg.data.eval_batch_size, per_rank,
                             dist.rank, dist.world_size, cfg.train.seed, cfg.data.mask_prob)
        return lambda: loop.evaluate_mlm(engine, valid, {"route": route}, loss_keys[1:])

    def export_final(run_dir: Path, checkpointer: Checkpointer) -> None:
        export(checkpointer.dir, run_dir / "final", tokenizer_path=str(Path(shards.path) / shards.index["tokenizer"]))

    spec = JobSpec(kind=kind, model_config=to_dict(model_cfg), make_loader=make_loader, make_model=make_model,
                   loss_keys=loss_keys, finalize=finalize or export_final, make_evaluate=make_evaluate,
                   forward_kwargs={"route": route},
                   micro_flops=loop.flops_counter(model_cfg, kind, **(flops_kwargs or {})))
    return run_job(cfg, spec, ds_config_path, resume)
