"""The masked-LM job that steps 1, 1b and 2 share: masked batches of a token corpus, validation
MLM loss of every head the route runs, and by default a consolidated model directory with a
Hugging Face export in final/. Each step brings its model (what trains: method/rules.py) and its
FLOP kind."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from ds_minimodel.artefacts.checkpoint_export import export_checkpoint
from ds_minimodel.config import ModelConfig, to_dict
from ds_minimodel.data.loader import MLMLoader, eval_batches
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.training import loop
from ds_minimodel.training.checkpoint import Checkpointer
from ds_minimodel.training.job import JobSpec, run_job


def open_corpus(path: str) -> TokenShards:
    shards = TokenShards.open(path)
    for split in ("train", "valid"):
        shards.split_info(split)
    return shards


def run_mlm_job(cfg, model_cfg: ModelConfig, shards: TokenShards, ds_config_path: str, resume: bool, *,
                make_model: Callable[[dict], torch.nn.Module], kind: str, route: str, loss_keys: tuple[str, ...],
                finalize: Callable[[Path, Checkpointer], None] | None = None, flops_kwargs: dict | None = None,
                checkpoint_frozen: bool = True) -> Path:
    """Run the MLM job of `cfg` (its .data, .optim and .train sections) over `shards`; `route` is
    MLMEncoder.forward's, `loss_keys` the losses it returns (the total first); checkpoint_frozen:
    JobSpec's."""

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
        export_checkpoint(checkpointer.dir, run_dir / "final", tokenizer_path=str(Path(shards.path) / shards.index["tokenizer"]))

    spec = JobSpec(kind=kind, model_config=to_dict(model_cfg), make_loader=make_loader, make_model=make_model,
                   loss_keys=loss_keys, finalize=finalize or export_final, make_evaluate=make_evaluate,
                   forward_kwargs={"route": route},
                   micro_flops=loop.flops_counter(model_cfg, kind, **(flops_kwargs or {})),
                   checkpoint_frozen=checkpoint_frozen)
    return run_job(cfg, spec, ds_config_path, resume)
