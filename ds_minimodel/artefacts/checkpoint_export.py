"""A training checkpoint as an artefact: the model directory a step hands the next one, plus its
Hugging Face export. It lives here, not in training/, so that the checkpoint code (below) never
imports the artefact writers (above it); it reads the checkpoint through `checkpoint.consolidate`.
"""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.artefacts import hf
from ds_minimodel.artefacts.modeldir import body_fingerprints, write_model_dir
from ds_minimodel.config import ModelConfig, from_dict
from ds_minimodel.errors import UserError
from ds_minimodel.training.checkpoint import consolidate, frozen_left_out_of


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, tag: str | None = None,
                      tokenizer_path: str | None = None, lineage: dict | None = None, hf_export: bool = True) -> Path:
    """A model directory (see modeldir.py) from a checkpoint, plus a Hugging Face export in hf/."""
    state, meta = consolidate(checkpoint_dir, tag)
    if frozen_left_out_of(meta):
        run_dir = Path(checkpoint_dir).parent
        body = meta["config"].get("adapt", {}).get("model_dir")
        raise UserError(f"{checkpoint_dir} holds only what its {meta.get('step_kind', 'adaptation')} run trained, not a "
                        f"whole model{f' (its frozen body is {body})' if body else ''}: the run's result is its "
                        f"language pack, in {run_dir / 'pack'} (or {run_dir / 'packs'} for several languages)")
    if "languages" in meta["config"]["model"]:
        raise UserError(f"{checkpoint_dir} is a multi-language adaptation run, not one model: its language packs "
                        f"are in {Path(checkpoint_dir).parent / 'packs'}")
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
