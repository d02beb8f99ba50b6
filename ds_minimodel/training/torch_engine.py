"""A plain-PyTorch engine with the calls the training loop and the Checkpointer make.

`train.engine=torch` trains without DeepSpeed: torch AdamW and our LR schedule over the
trainable parameters, loss scaled by 1/grad_accum, gradients averaged over ranks with one
all_reduce per optimizer step (what DDP and DeepSpeed ZeRO-0 compute), optional clipping (of all
parameters by one norm, or of each group of `clip_groups` by its own; `loss_accum`: see
engine.GroupedEngine). It writes the checkpoint layout of a DeepSpeed ZeRO-0 checkpoint for the model
(`mp_rank_00_model_states.pt` holding {"module": state dict}), so consolidation, export and
`--resume` work unchanged; optimizer and scheduler state go to `torch_optim_states.pt`.
No ZeRO: every rank holds the whole model and optimizer, fine for step 2, where only the
embeddings train.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ds_minimodel.config import OptimConfig
from ds_minimodel.errors import UserError
from ds_minimodel.training.optim import adamw, lr_lambda, optimizer_groups

MODEL_FILE = "mp_rank_00_model_states.pt"  # DeepSpeed's name at ZeRO-0: consolidate reads it
OPTIM_FILE = "torch_optim_states.pt"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


class TorchEngine:
    def __init__(self, model: torch.nn.Module, config: dict, optim: OptimConfig, total_steps: int,
                 clip_groups: list[list[torch.nn.Parameter]] | None = None, loss_accum: int | None = None):
        groups = optimizer_groups(model, optim.weight_decay)
        if not groups:
            raise UserError("nothing to train: every parameter of the model is frozen")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        else:
            self.device = torch.device("cpu")
        self.module = model.to(self.device)
        self.grad_accum = int(config["gradient_accumulation_steps"])  # micro-batches per optimizer step
        self.loss_accum = loss_accum or self.grad_accum  # what each micro-batch's loss is divided by
        self.grad_clip = float(config.get("gradient_clipping") or 0.0)
        self.params = [p for g in groups for p in g["params"]]
        # Clipped together: all parameters by one norm, or each group by its own.
        self.clip_groups = clip_groups if clip_groups is not None else [self.params]
        self.optimizer = adamw(groups, optim)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(optim, total_steps))
        self.micro_steps = 0
        if _world() > 1:  # every rank starts from rank 0's weights, as DeepSpeed makes sure too
            for t in self.module.state_dict().values():
                dist.broadcast(t, 0)

    # ---- what the loop calls --------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.loss_accum).backward()

    def step(self) -> None:
        """Called after every micro-batch; steps the optimizer at the accumulation boundary."""
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return
        with_grad = [p for p in self.params if p.grad is not None]
        if _world() > 1 and with_grad:
            # One flat all_reduce: one collective per step instead of one per tensor.
            flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
            dist.all_reduce(flat)
            flat /= _world()
            offset = 0
            for p in with_grad:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
        if self.grad_clip > 0:
            for group in self.clip_groups:
                torch.nn.utils.clip_grad_norm_([p for p in group if p.grad is not None], self.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def training(self) -> bool:
        return self.module.training

    def parameters(self):
        return self.module.parameters()

    # ---- checkpoints (the Checkpointer adds meta, RNG state and the manifest) ---------------

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict | None = None,
                        save_latest: bool = False, exclude_frozen_parameters: bool = False) -> None:
        """Rank 0 writes: every rank holds the same weights and optimizer state. As DeepSpeed's,
        exclude_frozen_parameters leaves out each frozen parameter (under its first name)."""
        tag_dir = Path(save_dir) / tag
        if _rank() == 0:
            tag_dir.mkdir(parents=True, exist_ok=True)
            module = self.module.state_dict()
            if exclude_frozen_parameters:
                for name, p in self.module.named_parameters():
                    if not p.requires_grad:
                        module.pop(name, None)
            torch.save({"module": module, "client_state": client_state or {}}, tag_dir / MODEL_FILE)
            torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                        "micro_steps": self.micro_steps}, tag_dir / OPTIM_FILE)
        if dist.is_initialized():
            dist.barrier()

    def load_checkpoint(self, load_dir: str, tag: str, load_optimizer_states: bool = True,
                        load_lr_scheduler_states: bool = True, custom_load_fn=None):
        """As DeepSpeed's: custom_load_fn(src=module state dict, dst=module) replaces the strict load."""
        tag_dir = Path(load_dir) / tag
        if not (tag_dir / OPTIM_FILE).is_file():
            raise UserError(f"checkpoint {tag_dir} was not written by train.engine=torch "
                            "(resume it with the engine that wrote it)")
        states = torch.load(tag_dir / MODEL_FILE, map_location=self.device, weights_only=False)
        if custom_load_fn is not None:
            custom_load_fn(src=states["module"], dst=self.module)
        else:
            self.module.load_state_dict(states["module"], strict=True)
        opt = torch.load(tag_dir / OPTIM_FILE, map_location=self.device, weights_only=False)
        if load_optimizer_states:
            self.optimizer.load_state_dict(opt["optimizer"])
        if load_lr_scheduler_states:
            self.lr_scheduler.load_state_dict(opt["lr_scheduler"])
        self.micro_steps = int(opt["micro_steps"])
        return str(tag_dir), states.get("client_state", {})
