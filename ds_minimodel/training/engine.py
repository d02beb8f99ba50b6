"""The only module that imports DeepSpeed.

It starts the process group, turns a DeepSpeed JSON into a validated config for this world
size, builds the engine from the *trainable* parameters only, and offers the ZeRO-3 helpers
(model construction under `zero.Init`, consolidating a checkpoint into one fp32 state dict).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")

import deepspeed  # noqa: E402
import pydantic  # noqa: E402
from deepspeed.runtime.config import DeepSpeedConfig  # noqa: E402
from deepspeed.utils import logger as ds_logger  # noqa: E402

from ds_minimodel.config import OptimConfig  # noqa: E402
from ds_minimodel.errors import UserError  # noqa: E402
from ds_minimodel.subprocess_runner import free_port  # noqa: E402
from ds_minimodel.training.optim import adamw, lr_lambda, optimizer_groups  # noqa: E402


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int = 600, use_deepspeed: bool = True) -> DistInfo:
    """Join (or create) the process group under deepspeed, torchrun, mpirun or plain python.

    Launchers export RANK/WORLD_SIZE/...; under mpirun only OMPI_* exist and DeepSpeed discovers
    the rest through mpi4py; a plain `python` run becomes a world of one on a free local port.
    The timeout bounds every collective, so a dead peer fails the run instead of hanging it.
    Without DeepSpeed (train.engine=torch) torch's own process group is used (gloo on CPU,
    nccl on GPU), which needs the RANK/WORLD_SIZE environment of deepspeed or torchrun.
    """
    under_mpi = "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ
    if "RANK" not in os.environ and not under_mpi:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    ds_logger.setLevel("WARNING")
    if not torch.distributed.is_initialized():
        if use_deepspeed:
            # Under MPI, discovery sets MASTER_PORT to distributed_port: honour the user's (mpirun -x
            # MASTER_PORT=...), or every job on a node would take DeepSpeed's default 29500.
            deepspeed.init_distributed(auto_mpi_discovery=under_mpi, timeout=timedelta(seconds=timeout_s),
                                       distributed_port=int(os.environ.get("MASTER_PORT", 29500)), verbose=False)
        elif "RANK" not in os.environ:
            raise UserError("train.engine=torch under mpirun needs RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; "
                            "launch with torchrun or deepspeed, or use train.engine=deepspeed")
        else:
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                                 timeout=timedelta(seconds=timeout_s))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def broadcast_from_main(obj):
    """Rank 0's `obj` on every rank (a collective; `obj` itself in a world of one). Usable right
    after init_distributed: under NCCL the exchange goes through this rank's own GPU."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    device = None
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)  # what the engine sets later anyway
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=device)
    return box[0]


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    """End a launched script cleanly (without it gloo occasionally aborts at exit)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------
# DeepSpeed JSON


def read_ds_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"DeepSpeed config {path} does not exist")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"DeepSpeed config {path} must be a JSON object")
    return cfg


def resolve_ds_config(raw: dict, world_size: int, *, micro_batch_size=None, grad_accum=None,
                      dtype: str = "fp32", grad_clip: float = 0.0, source: str = "DeepSpeed config") -> dict:
    """Fill in the batch triple for this world size and apply the YAML's training settings.

    DeepSpeed needs train_batch_size == micro * accum * world. Any two determine the third;
    YAML overrides of micro/accum win over the JSON (and then the JSON's train_batch_size is
    recomputed). A triple that cannot multiply out is an error naming all three numbers.
    """
    cfg = json.loads(json.dumps(raw))  # deep copy; never modify the caller's dict
    problems = []
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            problems.append(f"{source} defines '{key}'; set optim.* in the YAML config instead")
    if cfg.get("fp16", {}).get("enabled"):
        problems.append(f"{source} enables fp16, which this toolkit does not support; use train.dtype=bf16")
    mb = micro_batch_size if micro_batch_size is not None else cfg.get("train_micro_batch_size_per_gpu")
    ga = grad_accum if grad_accum is not None else cfg.get("gradient_accumulation_steps")
    tb = None if (micro_batch_size is not None or grad_accum is not None) else cfg.get("train_batch_size")
    for name, v in (("train_micro_batch_size_per_gpu", mb), ("gradient_accumulation_steps", ga),
                    ("train_batch_size", tb)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            problems.append(f"{source}: {name} must be a positive integer, got {v!r}")
    if problems:
        raise UserError("; ".join(problems))
    if mb is None and ga is None and tb is None:
        mb, ga = 1, 1
    if tb is None:
        mb, ga = mb or 1, ga or 1
    elif mb is None or ga is None:
        known = (mb or ga or 1) * world_size
        if tb % known:
            raise UserError(f"{source}: train_batch_size {tb} is not divisible by "
                            f"{'micro batch' if mb else 'accumulation steps'} x world size {world_size}")
        mb, ga = (mb, tb // known) if mb else (tb // known, ga or 1)
    if tb is not None and tb != mb * ga * world_size:
        raise UserError(
            f"{source}: train_batch_size {tb} != train_micro_batch_size_per_gpu {mb} x "
            f"gradient_accumulation_steps {ga} x world size {world_size} (= {mb * ga * world_size})"
        )
    cfg.update(train_micro_batch_size_per_gpu=mb, gradient_accumulation_steps=ga,
               train_batch_size=mb * ga * world_size)
    cfg["gradient_clipping"] = grad_clip
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": dtype == "bf16"}
    cfg.setdefault("steps_per_print", 10**9)  # we log ourselves
    cfg["zero_allow_untested_optimizer"] = True  # torch.optim.AdamW is fine under ZeRO
    problems = _non_finite_numbers(cfg, source) or _deepspeed_schema_problems(cfg, source)
    if problems:
        raise UserError("; ".join(problems))
    return cfg


def _non_finite_numbers(node, source: str, path: str = "") -> list[str]:
    """Python's json reads NaN and Infinity; no DeepSpeed setting means either."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _non_finite_numbers(v, source, f"{path}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _non_finite_numbers(v, source, f"{path}{i}.")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{source}: {path[:-1]} must be a finite number, got {node}"]
    return []


# DeepSpeed's pydantic models, by the JSON section they validate (their errors name only the field).
_DS_SECTIONS = {"DeepSpeedZeroConfig": "zero_optimization", "DeepSpeedBF16Config": "bf16",
                "DeepSpeedFP16Config": "fp16", "DeepSpeedActivationCheckpointingConfig": "activation_checkpointing",
                "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
                "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param"}


def _deepspeed_schema_problems(cfg: dict, source: str) -> list[str]:
    """What DeepSpeed's own config classes refuse (a ZeRO stage 7, an unknown offload device, a
    misspelt ZeRO key), one line each, before any process group exists: DeepSpeed itself would
    only refuse it inside deepspeed.initialize, as a pydantic traceback on every rank."""
    # Validated as a world of one (the batch triple was checked above for the real world size).
    world_one = {**cfg, "train_batch_size": cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"]}
    try:
        DeepSpeedConfig(world_one)
    except pydantic.ValidationError as e:
        section = _DS_SECTIONS.get(e.title, e.title)
        return [f"{source}: {'.'.join(map(str, (section, *err['loc'])))}: {err['msg']}, got {err['input']!r}"
                for err in e.errors()]
    except (AssertionError, ValueError, TypeError, KeyError) as e:
        return [f"{source}: DeepSpeed refuses it: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"]
    return []


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def model_init_context(ds_config: dict):
    """Build the model inside this: under ZeRO-3 each rank then only ever holds its shard."""
    if zero_stage(ds_config) == 3:
        return deepspeed.zero.Init(config_dict_or_path=ds_config)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Engine


def build_engine(model: torch.nn.Module, ds_config: dict, optim: OptimConfig, total_steps: int,
                 use_deepspeed: bool = True, clip_groups: list[list[torch.nn.Parameter]] | None = None,
                 loss_accum: int | None = None):
    """DeepSpeed engine over the trainable parameters, with torch AdamW and our LR schedule (or
    the plain-PyTorch engine with the same interface).

    For a job of several parts (languages) trained side by side, see `GroupedEngine`:
    clip_groups clips each group's gradient by its own norm (the config's gradient_clipping)
    instead of all of them by one; loss_accum divides each micro-batch's loss by this instead of
    the config's gradient_accumulation_steps (which then counts every part's micro-batches).
    """
    if not use_deepspeed:
        from ds_minimodel.training.torch_engine import TorchEngine

        return TorchEngine(model, ds_config, optim, total_steps, clip_groups=clip_groups, loss_accum=loss_accum)
    groups = optimizer_groups(model, optim.weight_decay)
    if not groups:
        raise UserError("nothing to train: every parameter of the model is frozen")
    max_norm = float(ds_config.get("gradient_clipping") or 0.0)
    clip_groups = clip_groups if max_norm > 0 else None
    if clip_groups is not None:
        check_group_clipping(ds_config, "this DeepSpeed config")
        ds_config = {**ds_config, "gradient_clipping": 0.0}  # DeepSpeed's one global clip: off
    optimizer = adamw(groups, optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    if clip_groups is not None or loss_accum is not None:
        return GroupedEngine(engine, clip_groups, max_norm, loss_accum)
    return engine


def check_group_clipping(ds_config: dict, source: str) -> None:
    """Per-group clipping (`GroupedEngine`) works under ZeRO 0-2 in fp32. DeepSpeed's bf16
    optimizer reduces and clips the gradients inside its own step, where no group can be
    clipped by its own norm; ZeRO-3 is refused for adaptation anyway."""
    if ds_config.get("bf16", {}).get("enabled"):
        raise UserError(f"clipping each language's gradient by its own norm needs fp32 under DeepSpeed "
                        f"(its bf16 optimizer clips inside its step by one global norm); {source} trains "
                        "in bf16: use train.dtype=fp32, or optim.grad_clip=0")
    if zero_stage(ds_config) > 2:
        raise UserError(f"clipping each language's gradient by its own norm needs ZeRO 0-2; {source} is ZeRO-3")


def accumulate_parts(ds_config: dict, parts: int, world_size: int) -> dict:
    """The engine config of a job whose every micro-batch comes in `parts` parts, each its own
    forward and backward: the optimizer step accumulates all of them (see `GroupedEngine`)."""
    ga = ds_config["gradient_accumulation_steps"] * parts
    return {**ds_config, "gradient_accumulation_steps": ga,
            "train_batch_size": ds_config["train_micro_batch_size_per_gpu"] * ga * world_size}


class GroupedEngine:
    """A DeepSpeed engine for parts (languages) trained side by side as if each ran alone.

    Each micro-batch holds one part; the optimizer step accumulates grad_accum micro-batches of
    every part (the engine's accumulation count, `accumulate_parts`), but each loss is divided by
    `loss_accum`, the accumulation of one part's own run, as DeepSpeed divides it there.

    With clip groups (each part's parameters), each is clipped by the norm of its own gradient
    instead of all by one global norm (turned off in DeepSpeed). At the accumulation boundary,
    backward has already reduced the gradients over the ranks (ZeRO-0: every rank holds all of
    them; ZeRO 1-2: each rank its fragment of each parameter), so between that backward and the
    optimizer step they are clipped in place: under ZeRO-0 by DeepSpeed's own clip_grad_norm_,
    group by group (what its step runs for one group); under ZeRO 1-2 each rank sums the squares
    of its fragments per group, one all_reduce of one number per group gives every group's
    norm, and each rank scales its fragments by the formula of DeepSpeed's ZeRO step.
    Everything else is the engine's own.
    """

    def __init__(self, engine, groups: list[list[torch.nn.Parameter]] | None, max_norm: float,
                 loss_accum: int | None):
        self.engine, self.groups, self.max_norm, self.loss_accum = engine, groups, max_norm, loss_accum
        self.partitioned = engine.zero_optimization_stage() > 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss):
        if self.loss_accum is None:
            return self.engine.backward(loss)
        return self.engine.backward(loss / self.loss_accum, scale_wrt_gas=False)

    def step(self) -> None:
        if self.groups is not None and self.engine.is_gradient_accumulation_boundary():
            self.clip()
        self.engine.step()

    @torch.no_grad()
    def clip(self) -> None:
        if not self.partitioned:
            from deepspeed.runtime.utils import clip_grad_norm_

            for group in self.groups:
                clip_grad_norm_([p for p in group if p.grad is not None], self.max_norm)
            return
        fragments = [[f for f in map(_grad_fragment, group) if f is not None] for group in self.groups]
        device = get_accelerator_device()
        zero = torch.zeros((), dtype=torch.float32, device=device)
        # The arithmetic of DeepSpeed's ZeRO norm: each tensor's 2-norm, squared and summed.
        squares = torch.stack([
            torch.stack([torch.linalg.vector_norm(owned.float()).to(device) for _, owned in group]).pow(2).sum()
            if group else zero for group in fragments])
        torch.distributed.all_reduce(squares)
        # ... and of its step: divide by max(1, (norm + 1e-6) / max_norm).
        divisors = ((squares.sqrt() + 1e-6) / self.max_norm).clamp(min=1.0)
        for group, divisor in zip(fragments, divisors):
            for grad, _ in group:
                grad.mul_(1.0 / divisor)


def accelerator():
    """DeepSpeed's accelerator object (synchronize, memory counters): for code outside this module,
    which never imports DeepSpeed itself."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator()


def get_accelerator_device() -> torch.device:
    return torch.device(accelerator().current_device_name())


def profiler_flops(module: torch.nn.Module, *, zero3_linear: bool = False) -> int:
    """DeepSpeed's FlopsProfiler.get_total_flops() for one forward of `module` (called with no
    arguments, under no_grad): what its profiler would report, for bench and profile_flops to
    set against the analytic count.

    zero3_linear: swap torch.nn.functional.linear for DeepSpeed's ZeRO-3 linear, as zero.Init
    does, without partitioning anything: that swap alone is what makes the profiler count every
    linear layer twice under ZeRO-3.
    """
    import logging

    from deepspeed.profiling.flops_profiler.profiler import FlopsProfiler
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    saved_linear, saved_level = torch.nn.functional.linear, ds_logger.level
    ds_logger.setLevel(logging.WARNING)
    if zero3_linear:
        torch.nn.functional.linear = zero3_linear_wrap
    prof = FlopsProfiler(module)
    try:
        prof.start_profile()
        with torch.no_grad():
            module()
        return int(prof.get_total_flops())
    finally:
        prof.end_profile()
        torch.nn.functional.linear = saved_linear
        ds_logger.setLevel(saved_level)


def _grad_fragment(param: torch.nn.Parameter):
    """(this rank's reduced gradient tensor of `param`, the part of it this rank owns) under ZeRO
    1-2, or None where the rank owns none of it. Read through the mapping DeepSpeed's own
    safe_get_full_grad reads (without its all_reduce of the whole tensor); the first tensor is
    written in place to change the gradient the optimizer step will read."""
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is None:
        return None
    grad = mapping.get_lp_grad_fragment(param._index_in_param_group)
    owned = grad.reshape(-1)
    address = mapping.lp_fragment_address
    if owned.numel() == param.numel() and address.numel != param.numel():  # a full-size buffer
        owned = owned.narrow(0, address.start, address.numel)
    return grad, owned


def consolidate_fp32(checkpoint_dir: str | Path, tag: str, stage: int) -> dict[str, torch.Tensor]:
    """One fp32 state dict from a DeepSpeed checkpoint of any ZeRO stage (frozen params too)."""
    checkpoint_dir = Path(checkpoint_dir)
    if stage == 0:
        states = torch.load(checkpoint_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                            weights_only=False)
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag))
