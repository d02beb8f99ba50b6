"""The one training loop every step of the pipeline uses (pretrain, MiniPost, adapt, finetune).

It knows nothing about what is trained: the caller hands it an engine, a loader whose
`next_step()` yields this rank's micro-batches, the forward keyword arguments (e.g. the route
through the model), an evaluation callback and a checkpointer. Losses are averaged over
micro-batches and ranks before logging, so every rank logs the same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from ds_minimodel.config import TrainConfig
from ds_minimodel.errors import UserError
from ds_minimodel.model import IGNORE_INDEX
from ds_minimodel.training import faults
from ds_minimodel.training.checkpoint import Checkpointer
from ds_minimodel.training.metrics import MetricsLogger


class NonFiniteLoss(UserError):
    """The loss became NaN or inf; the last good checkpoint is left as `latest`."""


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    flops: int = 0
    train_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "flops": self.flops,
                "train_seconds": self.train_seconds}


def flops_counter(model_cfg, kind: str, **kwargs) -> Callable[[dict], int]:
    """FLOPs of one micro-batch of step `kind`, from the masked positions it really has."""
    from ds_minimodel.method.flops import step_flops

    def count(batch: dict) -> int:
        B, T = batch["input_ids"].shape
        return step_flops(model_cfg, kind, B, T, int(batch["labels"].ne(IGNORE_INDEX).sum()), **kwargs).total

    return count


def world_peak_flops(dtype: str) -> float | None:
    """Peak FLOP/s of all ranks together: the vendor table on GPUs, a measured matmul rate on CPU."""
    from ds_minimodel.training import utilisation

    world = dist.get_world_size() if dist.is_initialized() else 1
    try:
        if torch.cuda.is_available():
            return world * utilisation.peak_flops(torch.cuda.get_device_name(), "bf16" if dtype == "bf16" else "fp32")
        return world * utilisation.measure_cpu_peak(seconds=0.3, n=512)
    except UserError:
        return None


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def to_device(batch: dict, device) -> dict:
    """The batch on `device`; nested dicts too (a multi-language batch: {"batches": {code: batch}})."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else to_device(v, device) if isinstance(v, dict)
            else v for k, v in batch.items()}


def batch_tokens(batch: dict) -> int:
    """Positions of a batch: its input_ids, or those of the batches nested in it."""
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return sum(batch_tokens(v) for v in batch.values() if isinstance(v, dict))


def train_step(engine, micro_batches: list[dict], forward_kwargs: dict, loss_keys: tuple[str, ...],
               micro_flops: Callable[[dict], int] | None = None) -> tuple[list[float], list[int], int, int]:
    """One optimizer step over this rank's micro-batches: (each loss summed over the micro-batches
    that return it, how many did, tokens, FLOPs). In a multi-language job each micro-batch is one
    language's and returns its own loss key."""
    sums, counts = [0.0] * len(loss_keys), [0] * len(loss_keys)
    tokens = flops = 0
    for batch in micro_batches:
        batch = to_device(batch, engine.device)
        out = engine(**batch, **forward_kwargs)
        engine.backward(out["loss"])
        engine.step()
        for i, key in enumerate(loss_keys):
            if key in out:
                sums[i] += float(out[key].detach())
                counts[i] += 1
        tokens += batch_tokens(batch)
        flops += micro_flops(batch) if micro_flops else 0
    return sums, counts, tokens, flops


def run(engine, loader, *, train: TrainConfig, state: LoopState, logger: MetricsLogger,
        checkpointer: Checkpointer, save_meta: Callable[[LoopState], dict],
        evaluate: Callable[[], dict] | None = None, forward_kwargs: dict | None = None,
        loss_keys: tuple[str, ...] = ("loss",), micro_flops: Callable[[dict], int] | None = None,
        peak_flops: float | None = None) -> LoopState:
    """Train from `state.step` up to `train.steps`. Returns the final state.

    micro_flops(batch) -> FLOPs of one micro-batch on this rank (summed over ranks for the log);
    peak_flops: this world's peak FLOP/s, for MFU.
    """
    forward_kwargs = forward_kwargs or {}
    device = engine.device
    world = dist.get_world_size() if dist.is_initialized() else 1
    last_saved = state.step
    window_start, window_tokens = time.perf_counter(), 0
    end = train.stop_at_step or train.steps
    while state.step < end:
        faults.inject("step", state.step + 1)
        t0 = time.perf_counter()
        micro_batches = loader.next_step()
        sums, counts, tokens, flops = train_step(engine, micro_batches, forward_kwargs, loss_keys, micro_flops)
        reduced = all_reduce_sum(sums + [tokens, flops], device)
        losses = {k: v / (n * world) for k, v, n in zip(loss_keys, reduced, counts)}
        step_tokens, step_flops = int(reduced[-2]), int(reduced[-1])
        state.step += 1
        state.tokens += step_tokens
        state.flops += step_flops
        state.train_seconds += time.perf_counter() - t0
        window_tokens += step_tokens

        if not all(math.isfinite(v) for v in losses.values()):
            bad = ", ".join(f"{k}={v}" for k, v in losses.items())
            last = checkpointer.latest_tag() or "none"
            raise NonFiniteLoss(f"non-finite loss at step {state.step} ({bad}); last good checkpoint: {last}")

        if state.step % train.log_every == 0 or state.step == train.steps:
            elapsed = time.perf_counter() - window_start
            record = {**losses, "lr": engine.get_lr()[0], "tokens": state.tokens, "flops": state.flops,
                      "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                      "train_seconds": round(state.train_seconds, 3)}
            if peak_flops and state.train_seconds > 0:
                record["mfu"] = round(state.flops / state.train_seconds / peak_flops, 5)
            logger.log("train", state.step, record)
            window_start, window_tokens = time.perf_counter(), 0
        logger.progress(state.step, {"loss": f"{losses['loss']:.3f}", "flops": f"{state.flops:.2e}"})

        if evaluate and ((train.eval_every and state.step % train.eval_every == 0) or state.step == train.steps):
            logger.log("eval", state.step, {**evaluate(), "flops": state.flops,
                                            "train_seconds": round(state.train_seconds, 3)})
        if (train.save_every and state.step % train.save_every == 0) or state.step == end:
            checkpointer.save(engine, state.step, save_meta(state))
            last_saved = state.step
    if last_saved != state.step:  # e.g. a resumed run that was already at train.steps
        checkpointer.save(engine, state.step, save_meta(state))
    return state


@torch.no_grad()
def evaluate_mlm(engine, batches: list[dict], forward_kwargs: dict, loss_keys: tuple[str, ...]) -> dict:
    """Token-weighted mean of each loss over this rank's batches, reduced over ranks.

    Every rank must run the same number of forwards (ZeRO-3 gathers are collective), which the
    caller guarantees by giving each rank the same count of batches.
    """
    engine.eval()
    sums = [0.0] * (len(loss_keys) + 1)
    for batch in batches:
        batch = to_device(batch, engine.device)
        out = engine(**batch, **forward_kwargs)
        n = float(out["num_masked"])
        for i, key in enumerate(loss_keys):
            sums[i] += float(out[key]) * n
        sums[-1] += n
    engine.train()
    reduced = all_reduce_sum(sums, engine.device)
    total = max(reduced[-1], 1.0)
    return {f"valid_{k}": v / total for k, v in zip(loss_keys, reduced[:-1])}
