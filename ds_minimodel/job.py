"""The skeleton every training step shares, from a validated config to a finished run.

Everything that can be checked is checked before the process group starts, identically on every
rank, so bad input fails every rank at once with the same one-line error instead of leaving a
peer waiting in a collective. Then: engine over the trainable parameters, resume, the one
training loop (train.py), checkpoints, metrics, and the step's own `finalize` on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from ds_minimodel import engine as ds
from ds_minimodel import train as loop
from ds_minimodel.checkpoint import Checkpointer
from ds_minimodel.config import to_dict
from ds_minimodel.errors import UserError, check_creatable
from ds_minimodel.metrics import MetricsLogger


def env_world_size() -> int:
    """World size from the launcher's environment, before the process group exists."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if key in os.environ:
            return int(os.environ[key])
    return 1


def env_rank() -> int:
    """This process's global rank from the launcher's environment, before the process group
    exists (under mpirun only OMPI_COMM_WORLD_RANK / PMI_RANK are set until DeepSpeed's MPI
    discovery: reading RANK alone gave every rank the data of rank 0)."""
    for key in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run never writes into a directory that holds another run's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"train.out_dir {run_dir} exists and is not a directory")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise UserError(f"train.out_dir {run_dir} already holds a run; pass --resume to continue it "
                        "or choose another train.out_dir")
    if resume and run_dir.is_dir() and (run_dir / "config.yaml").is_file():
        return
    check_creatable(run_dir, "train.out_dir")


@dataclass
class JobSpec:
    """What a step adds to the skeleton.

    make_loader(micro_batch, grad_accum, rank, world) -> loader with next_step/state_dict/load_state_dict
    make_model(ds_config) -> model with requires_grad already set (only those reach the optimizer)
    make_evaluate(engine, dist) -> a callable returning {"valid_...": value}, or None
    finalize(run_dir, checkpointer) runs on rank 0 after the last step.
    """

    kind: str
    model_config: dict
    make_loader: Callable
    make_model: Callable
    loss_keys: tuple[str, ...]
    finalize: Callable[[Path, Checkpointer], None]
    make_evaluate: Callable | None = None
    forward_kwargs: dict | None = None
    micro_flops: Callable[[dict], int] | None = None


def run_job(cfg, spec: JobSpec, ds_config_path: str, resume: bool) -> Path:
    """`cfg` has .optim and .train sections (and whatever the spec's callables read)."""
    run_dir = Path(cfg.train.out_dir)
    check_run_dir(run_dir, resume)
    world = env_world_size()
    use_deepspeed = cfg.train.engine == "deepspeed"
    raw_ds = ds.read_ds_config(ds_config_path) if ds_config_path else {}
    if not use_deepspeed and ds.zero_stage(raw_ds) > 0:
        raise UserError(f"train.engine=torch has no ZeRO, but {ds_config_path} asks for stage "
                        f"{ds.zero_stage(raw_ds)}; use a ZeRO-0 config or train.engine=deepspeed")
    ds_config = ds.resolve_ds_config(raw_ds, world,
                                     micro_batch_size=cfg.train.micro_batch_size, grad_accum=cfg.train.grad_accum,
                                     dtype=cfg.train.dtype, grad_clip=cfg.optim.grad_clip,
                                     source=f"DeepSpeed config {ds_config_path}")
    # Built before the process group too: data too small for one global batch fails here.
    loader = spec.make_loader(ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"],
                              env_rank(), world)

    dist = ds.init_distributed(cfg.train.collective_timeout_s, use_deepspeed)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.yaml").exists():
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    engine = ds.build_engine(spec.make_model(ds_config), ds_config, cfg.optim, cfg.train.steps, use_deepspeed)
    torch.manual_seed(cfg.train.seed + 1 + dist.rank)  # distinct dropout stream per rank

    peak_flops = loop.world_peak_flops(cfg.train.dtype)
    checkpointer = Checkpointer(run_dir, dist, cfg.train.keep_last)
    state = loop.LoopState()
    resumed_from = None
    if resume:
        meta = checkpointer.load(engine, spec.model_config)
        if meta is not None:
            loader.load_state_dict(meta["data"])
            state = loop.LoopState(**{k: meta["loop"][k] for k in ("step", "tokens", "flops", "train_seconds")})
            resumed_from = meta["tag"]
    evaluate = spec.make_evaluate(engine, dist) if spec.make_evaluate else None

    def save_meta(s: loop.LoopState) -> dict:
        return {"zero_stage": ds.zero_stage(ds_config), "config": {**to_dict(cfg), "model": spec.model_config},
                "data": loader.state_dict(), "loop": s.to_dict(), "step_kind": spec.kind}

    logger = MetricsLogger(run_dir, is_main=dist.is_main, total_steps=cfg.train.steps, start_step=state.step,
                           progress=cfg.train.progress,
                           wandb_project=cfg.train.wandb_project if cfg.train.wandb else None,
                           run_config=to_dict(cfg))
    logger.log("start", state.step, {"step_kind": spec.kind})  # what runs, and what its FLOPs and MFU count
    if resumed_from:  # on record: which checkpoint each attempt continued from (bench/faults.py reads it)
        logger.log("resume", state.step, {"checkpoint": resumed_from})
        logger.write(f"resumed from {checkpointer.dir / resumed_from} (step {state.step})")
    if state.step == 0 and evaluate:
        logger.log("eval", 0, {**evaluate(), "flops": 0, "train_seconds": 0.0})
    try:
        state = loop.run(engine, loader, train=cfg.train, state=state, logger=logger, checkpointer=checkpointer,
                         save_meta=save_meta, evaluate=evaluate, forward_kwargs=spec.forward_kwargs,
                         loss_keys=spec.loss_keys, micro_flops=spec.micro_flops,
                         peak_flops=peak_flops)
    finally:
        logger.close()
    if dist.is_main and state.step == cfg.train.steps:
        spec.finalize(run_dir, checkpointer)
        print(f"done: {state.step} steps, {state.tokens} tokens; outputs in {run_dir}", flush=True)
    ds.barrier()
    return run_dir
