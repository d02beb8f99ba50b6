"""Step 1: MiniJoint pretraining (or plain MLM when no mid head is configured).

Everything that can be checked is checked before the process group starts, identically on every
rank, so bad input fails every rank at once with the same one-line error instead of leaving a
peer waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from pathlib import Path
from typing import Callable

import torch
import yaml

from ds_minimodel import engine as ds
from ds_minimodel import train as loop
from ds_minimodel.checkpoint import Checkpointer, export
from ds_minimodel.config import ModelConfig, PretrainConfig, to_dict
from ds_minimodel.data.loader import MLMLoader, eval_batches
from ds_minimodel.data.shards import TokenShards
from ds_minimodel.errors import UserError
from ds_minimodel.metrics import MetricsLogger
from ds_minimodel.model import MLMEncoder


def env_world_size() -> int:
    """World size from the launcher's environment, before the process group exists."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if key in os.environ:
            return int(os.environ[key])
    return 1


def resolve_vocab(model: ModelConfig, shards: TokenShards) -> ModelConfig:
    """Take the vocabulary size from the data, or refuse a model that doesn't match it."""
    if model.vocab_size is None:
        return dataclasses.replace(model, vocab_size=shards.vocab_size)
    if model.vocab_size != shards.vocab_size:
        raise UserError(f"model.vocab_size {model.vocab_size} does not match the tokenizer of {shards.path} "
                        f"({shards.vocab_size} pieces)")
    return model


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run never writes into a directory that holds another run's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"train.out_dir {run_dir} exists and is not a directory")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise UserError(f"train.out_dir {run_dir} already holds a run; pass --resume to continue it "
                        "or choose another train.out_dir")
    if resume and run_dir.is_dir() and (run_dir / "config.yaml").is_file():
        return
    parent = run_dir if run_dir.exists() else run_dir.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"train.out_dir {run_dir} is not writable")


def build_model(model_cfg: ModelConfig, ds_config: dict, seed: int) -> MLMEncoder:
    torch.manual_seed(seed)  # identical init on every rank and in a 1-process reference run
    with ds.model_init_context(ds_config):
        return MLMEncoder(model_cfg)


def freeze(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Turn off gradients of parameters whose names match any fnmatch pattern; returns them."""
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise UserError(f"train.freeze pattern(s) {', '.join(unmatched)} match no parameter "
                        f"(names look like {names[0]}, layers.0.fc1.weight)")
    frozen = []
    for n, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(n, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def run(cfg: PretrainConfig, ds_config_path: str, resume: bool = False) -> Path:
    shards = open_corpus(cfg.data.path)
    cfg = dataclasses.replace(cfg, model=resolve_vocab(cfg.model, shards))
    joint = cfg.model.mid_head_layer is not None

    def make_model(ds_config: dict) -> MLMEncoder:
        model = build_model(cfg.model, ds_config, cfg.train.seed)
        freeze(model, cfg.train.freeze)
        return model

    return run_mlm_job(cfg, cfg.model, shards, ds_config_path, resume, make_model=make_model,
                       kind="pretrain_joint" if joint else "pretrain", route="joint",
                       loss_keys=("loss", "final_loss", "mid_loss") if joint else ("loss", "final_loss"))


def open_corpus(path: str) -> TokenShards:
    shards = TokenShards.open(path)
    for split in ("train", "valid"):
        shards.split_info(split)
    return shards


def run_mlm_job(cfg, model_cfg: ModelConfig, shards: TokenShards, ds_config_path: str, resume: bool, *,
                make_model: Callable[[dict], torch.nn.Module], kind: str, route: str, loss_keys: tuple[str, ...],
                finalize: Callable[[Path, Checkpointer], None] | None = None, flops_kwargs: dict | None = None) -> Path:
    """One MLM training job (pretraining, MiniPost top, adaptation) from config to final export.

    `cfg` has .data, .optim and .train sections; `make_model(ds_config)` returns the model with
    requires_grad already set (only trainable parameters reach the optimizer); `finalize` runs
    on rank 0 after the last step (default: consolidate + Hugging Face export into final/).
    """
    run_dir = Path(cfg.train.out_dir)
    check_run_dir(run_dir, resume)
    ds_config = ds.resolve_ds_config(ds.read_ds_config(ds_config_path), env_world_size(),
                                     micro_batch_size=cfg.train.micro_batch_size, grad_accum=cfg.train.grad_accum,
                                     dtype=cfg.train.dtype, grad_clip=cfg.optim.grad_clip,
                                     source=f"DeepSpeed config {ds_config_path}")
    mb, ga = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    # Built before the process group too: a corpus too small for one global batch fails here.
    loader = MLMLoader(shards, "train", cfg.data.seq_len, mb, ga, int(os.environ.get("RANK", 0)),
                       env_world_size(), cfg.train.seed, cfg.data.mask_prob)

    dist = ds.init_distributed(cfg.train.collective_timeout_s)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.yaml").exists():
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    engine = ds.build_engine(make_model(ds_config), ds_config, cfg.optim, cfg.train.steps)
    torch.manual_seed(cfg.train.seed + 1 + dist.rank)  # distinct dropout stream per rank

    checkpointer = Checkpointer(run_dir, dist, cfg.train.keep_last)
    state = loop.LoopState()
    if resume:
        meta = checkpointer.load(engine, to_dict(model_cfg))
        if meta is not None:
            loader.load_state_dict(meta["data"])
            state = loop.LoopState(**{k: meta["loop"][k] for k in ("step", "tokens", "flops", "train_seconds")})

    per_rank = math.ceil(cfg.data.eval_batches / dist.world_size)
    valid = eval_batches(shards, "valid", cfg.data.seq_len, cfg.data.eval_batch_size, per_rank,
                         dist.rank, dist.world_size, cfg.train.seed, cfg.data.mask_prob) if per_rank else []

    def evaluate() -> dict:
        return loop.evaluate_mlm(engine, valid, {"route": route}, loss_keys[1:])

    def save_meta(s: loop.LoopState) -> dict:
        config = {**to_dict(cfg), "model": to_dict(model_cfg)}
        return {"zero_stage": ds.zero_stage(ds_config), "config": config, "data": loader.state_dict(),
                "loop": s.to_dict(), "step_kind": kind}

    logger = MetricsLogger(run_dir, is_main=dist.is_main, total_steps=cfg.train.steps, start_step=state.step,
                           progress=cfg.train.progress,
                           wandb_project=cfg.train.wandb_project if cfg.train.wandb else None,
                           run_config=to_dict(cfg))
    if state.step == 0 and valid:
        logger.log("eval", 0, {**evaluate(), "flops": 0, "train_seconds": 0.0})
    try:
        state = loop.run(engine, loader, train=cfg.train, state=state, logger=logger, checkpointer=checkpointer,
                         save_meta=save_meta, evaluate=evaluate if valid else None,
                         forward_kwargs={"route": route}, loss_keys=loss_keys,
                         micro_flops=loop.flops_counter(model_cfg, kind, **(flops_kwargs or {})),
                         peak_flops=loop.world_peak_flops(cfg.train.dtype))
    finally:
        logger.close()
    if dist.is_main and state.step == cfg.train.steps:
        if finalize is not None:
            finalize(run_dir, checkpointer)
        else:
            tokenizer = str(Path(shards.path) / shards.index["tokenizer"])
            export(checkpointer.dir, run_dir / "final", tokenizer_path=tokenizer)
        print(f"done: {state.step} steps, {state.tokens} tokens; outputs in {run_dir}", flush=True)
    ds.barrier()
    return run_dir
