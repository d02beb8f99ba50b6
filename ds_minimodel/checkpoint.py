"""Checkpoints that never lie about being complete, and resume onto the exact same trajectory.

Layout of `<run>/checkpoints/`:

    step_00000100/      DeepSpeed's files (model + ZeRO shards of every rank),
                        rng_rank<r>.pt (each rank's RNG states: dropout continues identically),
                        meta.json (step, world size, ZeRO stage, data-loader position, resolved
                        config) -- written by rank 0 only after every rank finished: its presence
                        is what makes the directory a checkpoint.
    latest              the newest complete tag, replaced atomically after meta.json exists.

A run killed mid-save leaves a directory without meta.json, which is never loaded and is
removed by the next save; `latest` still names the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ds_minimodel import engine as ds
from ds_minimodel.errors import UserError

META = "meta.json"
LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / META).is_file()


def read_meta(tag_dir: Path) -> dict:
    try:
        return json.loads((tag_dir / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {tag_dir} has an unreadable {META}: {e}") from None


class Checkpointer:
    def __init__(self, run_dir: str | Path, dist: ds.DistInfo, keep_last: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.dist = dist
        self.keep_last = keep_last

    # ---- reading ------------------------------------------------------------------------

    def complete_tags(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.glob("step_*") if p.is_dir() and is_complete(p))

    def latest_tag(self) -> str | None:
        """The tag `latest` names, if that checkpoint is complete (else the newest complete one)."""
        pointer = self.dir / LATEST
        if pointer.is_file():
            tag = pointer.read_text(encoding="utf-8").strip()
            if is_complete(self.dir / tag):
                return tag
        tags = self.complete_tags()
        return tags[-1] if tags else None

    # ---- writing ------------------------------------------------------------------------

    def save(self, engine, step: int, meta: dict) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        tag = tag_for(step)
        tag_dir = self.dir / tag
        if self.dist.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists() and not is_complete(tag_dir):
                shutil.rmtree(tag_dir)  # debris of a save that was killed half-way
        ds.barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step}, save_latest=False)
        torch.save(rng_state(), tag_dir / f"rng_rank{self.dist.rank}.pt")
        ds.barrier()  # every rank's shards and RNG file are on disk past this point
        if self.dist.is_main:
            full = {"step": step, "tag": tag, "world_size": self.dist.world_size, **meta}
            write_atomic(tag_dir / META, json.dumps(full, indent=2))
            write_atomic(self.dir / LATEST, tag)
            self._prune()
        ds.barrier()
        return tag_dir

    def _prune(self) -> None:
        keep = set(self.complete_tags()[-self.keep_last:])
        for p in self.dir.glob("step_*"):
            if p.is_dir() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    # ---- resuming -----------------------------------------------------------------------

    def load(self, engine, expected_model: dict) -> dict | None:
        """Restore engine, optimizer, scheduler and RNG from the latest complete checkpoint.

        Returns its meta (step, data position, ...) or None when there is none. A checkpoint of
        another model shape or world size is refused before DeepSpeed touches anything.
        """
        tag = self.latest_tag()
        if tag is None:
            return None
        tag_dir = self.dir / tag
        meta = read_meta(tag_dir)
        saved_model = meta.get("config", {}).get("model")
        if saved_model != expected_model:
            diff = sorted(k for k in set(saved_model or {}) | set(expected_model)
                          if (saved_model or {}).get(k) != expected_model.get(k))
            raise UserError(f"checkpoint {tag_dir} is for a different model (differs in: {', '.join(diff)})")
        if meta.get("world_size") != self.dist.world_size:
            raise UserError(f"checkpoint {tag_dir} was written by {meta.get('world_size')} ranks; "
                            f"this run has {self.dist.world_size} (exact resume needs the same world size)")
        path, _ = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise UserError(f"DeepSpeed could not load checkpoint {tag_dir}")
        set_rng_state(torch.load(tag_dir / f"rng_rank{self.dist.rank}.pt", weights_only=False))
        return meta


def consolidate(checkpoint_dir: str | Path, tag: str | None = None) -> tuple[dict, dict]:
    """(fp32 state dict, meta) of a complete checkpoint, whatever its ZeRO stage."""
    checkpoint_dir = Path(checkpoint_dir)
    ck = Checkpointer(checkpoint_dir.parent, ds.DistInfo(0, 1, 0))
    tag = tag or ck.latest_tag()
    if tag is None or not is_complete(checkpoint_dir / tag):
        raise UserError(f"no complete checkpoint {'named ' + tag if tag else ''} in {checkpoint_dir}")
    meta = read_meta(checkpoint_dir / tag)
    state = ds.consolidate_fp32(checkpoint_dir, tag, int(meta.get("zero_stage", 0)))
    return state, meta


def export(checkpoint_dir: str | Path, out_dir: str | Path, tag: str | None = None,
           tokenizer_path: str | None = None, lineage: dict | None = None, hf_export: bool = True) -> Path:
    """A model directory (see modeldir.py) from a checkpoint, plus a Hugging Face export in hf/."""
    from ds_minimodel import hf
    from ds_minimodel.config import ModelConfig, from_dict
    from ds_minimodel.modeldir import body_fingerprints, write_model_dir

    state, meta = consolidate(checkpoint_dir, tag)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "model.pt").exists():
        raise UserError(f"export directory {out_dir} is not empty and is not a previous export")
    model_cfg = from_dict(ModelConfig, meta["config"]["model"])
    lineage = dict(lineage or {"kind": meta.get("step_kind", "pretrain")})
    lineage.setdefault("body_fingerprints", body_fingerprints(state, model_cfg))
    write_model_dir(out_dir, state, meta["config"], lineage, tokenizer_path)
    if hf_export:
        hf.export_hf(state, model_cfg, out_dir / "hf", tokenizer_path=tokenizer_path)
    return out_dir
