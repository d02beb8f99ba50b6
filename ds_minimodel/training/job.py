"""The skeleton every training step shares, from a validated config to a finished run.

Everything that can be checked is checked before the process group starts, identically on every
rank, so bad input fails every rank at once with the same one-line error instead of leaving a
peer waiting in a collective. Then global rank 0 takes the run directory's lock (run_lock.py:
a second job into a live run fails on every rank, naming the owner, before it writes anything)
and holds it to the end. Building the data loader and forming the process group take a while, and
another job may start and even finish a run in the directory meanwhile: so once the lock is held,
rank 0 looks again and refuses a directory that is no longer what the check saw. Then: engine
over the trainable parameters, resume, the one training loop (loop.py), checkpoints, metrics, and
the step's own `finalize` on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from ds_minimodel.config import to_dict
from ds_minimodel.errors import UserError, check_creatable
from ds_minimodel.training import engine as ds
from ds_minimodel.training import loop, run_lock
from ds_minimodel.training.checkpoint import Checkpointer
from ds_minimodel.training.metrics import MetricsLogger


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


def run_dir_contents(run_dir: Path) -> dict[str, tuple]:
    """What a check sees of a run directory: each entry (the lock's own files left out) and each
    entry of its subdirectories (checkpoints/step_..., final/...), with kind, size and mtime. A
    job writing there changes it: a new checkpoint, a metrics line, an export. The first check
    runs before the lock, beside a live owner perhaps (a --resume the lock refuses later): an
    entry it replaces or prunes between the listing and the stat is simply gone."""
    seen = {}
    if not run_dir.is_dir():
        return seen
    for entry in os.scandir(run_dir):
        if run_lock.is_lock_file(entry.name):
            continue
        try:
            paths = [entry] + (list(os.scandir(entry.path)) if entry.is_dir(follow_symlinks=False) else [])
        except FileNotFoundError:
            continue
        for e in paths:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            seen[os.path.relpath(e.path, run_dir)] = (e.is_dir(follow_symlinks=False), st.st_size, st.st_mtime_ns)
    return seen


def check_run_dir(run_dir: Path, resume: bool) -> dict[str, tuple]:
    """A new run never writes into a directory that holds another run's files (the files of the
    run lock alone, left by an owner killed before it wrote anything, are no run). Returns what
    it saw (run_dir_contents), for recheck_run_dir once the lock is held."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"train.out_dir {run_dir} exists and is not a directory")
    if not resume and run_dir.is_dir() and any(not run_lock.is_lock_file(p.name) for p in run_dir.iterdir()):
        owner = run_lock.live_owner(run_dir)
        raise UserError(f"train.out_dir {run_dir} already holds a run"
                        + (f" and is in use by {owner}; wait for it to end or choose another train.out_dir" if owner
                           else "; pass --resume to continue it or choose another train.out_dir"))
    if not (resume and run_dir.is_dir() and (run_dir / "config.yaml").is_file()):
        check_creatable(run_dir, "train.out_dir")
    return run_dir_contents(run_dir)


def recheck_run_dir(run_dir: Path, resume: bool, seen: dict[str, tuple]) -> None:
    """Under the lock: refuse a directory that another job wrote into since check_run_dir saw it
    (a run started, or even finished, while this job built its loader and process group). Only
    the lock's holder writes there, so any change is another job's."""
    now = run_dir_contents(run_dir)
    if now == seen:
        return
    changed = ", ".join(sorted({name.split(os.sep)[0] for name in set(now) ^ set(seen)}
                               | {name.split(os.sep)[0] for name in set(now) & set(seen) if now[name] != seen[name]}))
    if not resume:
        raise UserError(f"train.out_dir {run_dir} held no run when this job checked it, but another job wrote one "
                        f"there ({changed}) before this job took its lock; choose another train.out_dir, or pass "
                        "--resume to continue that run")
    raise UserError(f"train.out_dir {run_dir} changed between this job's check and its lock: another job wrote "
                    f"{changed} meanwhile, so this is not the run this job set out to continue; look at it, then "
                    "launch again with --resume to continue it as it is now")


def take_run_lock(lock: run_lock.RunLock, dist: ds.DistInfo,
                  recheck: Callable[[], None] | None = None) -> run_lock.RunLock | None:
    """Collective: global rank 0 takes the run directory's lock (it alone writes the directory's
    run files), runs `recheck` under it, and every rank learns the verdict, so a second launch
    fails on all its ranks with the same line instead of leaving peers in a collective. Returns
    the held lock on rank 0."""
    verdict, error = None, None
    if dist.is_main:
        try:
            lock.acquire()
            try:
                if recheck is not None:
                    recheck()
            except BaseException:
                lock.release()
                raise
        except UserError as e:
            error, verdict = e, str(e)
        except OSError as e:  # e.g. no write access: the line cli.run_main prints on rank 0
            error, verdict = e, f"{e.strerror}: {e.filename}" if e.filename else str(e)
        except Exception as e:
            error, verdict = e, f"rank 0 could not lock {lock.what} {lock.dir}: {type(e).__name__}: {e}"
    verdict = ds.broadcast_from_main(verdict)
    if error is not None:
        raise error
    if verdict is not None:
        raise UserError(verdict)
    return lock if dist.is_main else None


@dataclass
class JobSpec:
    """What a step adds to the skeleton.

    make_loader(micro_batch, grad_accum, rank, world) -> loader with next_step/state_dict/load_state_dict
    make_model(ds_config) -> model with requires_grad already set (only those reach the optimizer)
    make_evaluate(engine, dist) -> a callable returning {"valid_...": value}, or None
    finalize(run_dir, checkpointer) runs on rank 0 after the last step.
    For a job of several languages trained side by side as if each ran alone:
    parts: each configured micro-batch comes as this many micro-batches (one per language), each
    its own forward and backward; the optimizer step accumulates all of them, each loss divided by
    the configured gradient accumulation as in its own run (engine.GroupedEngine);
    clip_groups(model) -> groups of trainable parameters each clipped by its own gradient norm
    (optim.grad_clip) instead of all by one; rank_state(model) -> per-rank state saved with each
    rank's RNG state (state_dict/load_state_dict).
    checkpoint_frozen=False: checkpoints hold only the trained parameters, for a step whose
    make_model rebuilds the frozen ones from its inputs (adaptation's body: 87 of the 124 MB
    of a multilingual-e5-small checkpoint); a resume checks them against the saved sha256.
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
    parts: int = 1
    clip_groups: Callable | None = None
    rank_state: Callable | None = None
    checkpoint_frozen: bool = True


def run_job(cfg, spec: JobSpec, ds_config_path: str, resume: bool) -> Path:
    """`cfg` has .optim and .train sections (and whatever the spec's callables read)."""
    run_dir = Path(cfg.train.out_dir)
    seen = check_run_dir(run_dir, resume)
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
    lock = run_lock.RunLock(run_dir, "train.out_dir")  # reads DSM_RUN_LOCK*: bad values fail here

    dist = ds.init_distributed(cfg.train.collective_timeout_s, use_deepspeed)
    # Held until the run ends, however it ends; then the directory must still be what the check saw.
    held = take_run_lock(lock, dist, recheck=lambda: recheck_run_dir(run_dir, resume, seen))
    try:
        _train(cfg, spec, run_dir, ds_config, loader, dist, resume, use_deepspeed)
    finally:
        if held is not None:
            held.release()
    return run_dir


def _train(cfg, spec: JobSpec, run_dir: Path, ds_config: dict, loader, dist: ds.DistInfo, resume: bool,
           use_deepspeed: bool) -> None:
    """Everything after the checks, on a directory this job owns."""
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_lock.check_owner(run_dir)  # every write that matters is fenced (run_lock.py)
        if not (run_dir / "config.yaml").exists():
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    model = spec.make_model(ds_config)
    parts = spec.parts > 1  # the engine accumulates every part's micro-batches, each loss as in its own run
    engine = ds.build_engine(model, ds.accumulate_parts(ds_config, spec.parts, dist.world_size) if parts else ds_config,
                             cfg.optim, cfg.train.steps, use_deepspeed,
                             clip_groups=spec.clip_groups(model) if spec.clip_groups else None,
                             loss_accum=ds_config["gradient_accumulation_steps"] if parts else None)
    torch.manual_seed(cfg.train.seed + 1 + dist.rank)  # distinct dropout stream per rank

    peak_flops = loop.world_peak_flops(cfg.train.dtype)
    checkpointer = Checkpointer(run_dir, dist, cfg.train.keep_last,
                                rank_state=spec.rank_state(model) if spec.rank_state else None,
                                exclude_frozen=not spec.checkpoint_frozen)
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
        run_lock.check_owner(run_dir)  # the final export, too, only while this job owns the directory
        spec.finalize(run_dir, checkpointer)
        print(f"done: {state.step} steps, {state.tokens} tokens; outputs in {run_dir}", flush=True)
    ds.barrier()
