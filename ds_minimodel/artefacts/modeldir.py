"""Model directories: how pipeline steps hand models to each other.

    model.pt        fp32 state dict (our parameter names)
    config.json     the producing step's resolved config ({"model": ModelConfig fields, ...})
    lineage.json    kind ("pretrain", "minipost", "finetune"), the fingerprints of the original
                    pretrained body for each depth k (so a language pack trained under layers
                    1..k of that body can be checked against a model fine-tuned from it), the
                    MiniPost depth, the task, ...
    tokenizer.model the source-language tokenizer

A local Hugging Face directory (config.json with "model_type") is read through `hf.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ds_minimodel.artefacts.surgery import fingerprint
from ds_minimodel.config import ModelConfig, from_dict, read_json_object
from ds_minimodel.errors import UserError


# lineage.json keys renamed since directories were first written: {old: new}, read under the new
# name. MiniPost's depth k was "mini_layers".
LINEAGE_RENAMED = {"mini_layers": "mini_depth"}


def body_fingerprints(state: dict, cfg: ModelConfig, upto: int | None = None) -> dict[str, str]:
    return {str(k): fingerprint(state, k) for k in range(1, (upto or cfg.num_layers) + 1)}


def read_model_dir(path: str | Path) -> tuple[dict, ModelConfig, dict]:
    """(state dict, model config, lineage) of one of our model directories or an HF directory."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is not a model directory (no config.json)")
    raw = read_json_object(cfg_file)
    if "model_type" in raw:  # a Hugging Face directory
        from ds_minimodel.artefacts import hf, hf_source

        # Its tokenizer (any kind a checkpoint ships, special ids checked against the checkpoint's),
        # and the pad id the model pads with: the tokenizer's.
        tok, overrides = hf_source.tokenizer_and_overrides(path)
        model = hf.load_hf_pretrained(str(path), overrides=overrides)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        lineage = {"kind": "hf", "source": str(path), "fresh_heads": list(getattr(model, "hf_fresh_init", ()))}
        lineage["body_fingerprints"] = body_fingerprints(state, model.cfg)
        lineage["tokenizer"] = tok.path if tok else None
        return state, model.cfg, lineage
    if "model" not in raw:
        raise UserError(f"{cfg_file} has neither a 'model' section nor a Hugging Face 'model_type'")
    cfg = from_dict(ModelConfig, raw["model"])
    if not (path / "model.pt").is_file():
        raise UserError(f"{path} has no model.pt")
    try:
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt file: torch raises several types
        raise UserError(f"{path}/model.pt is unreadable: {e}") from None
    lineage_file = path / "lineage.json"
    lineage = read_json_object(lineage_file) if lineage_file.is_file() else {}
    for old, new in LINEAGE_RENAMED.items():  # written by an older version
        if old in lineage:
            lineage.setdefault(new, lineage.pop(old))
    lineage.setdefault("kind", "pretrain")
    if "body_fingerprints" not in lineage:
        lineage["body_fingerprints"] = body_fingerprints(state, cfg)
    tok = path / "tokenizer.model"
    lineage["tokenizer"] = str(tok) if tok.is_file() else lineage.get("tokenizer")
    lineage["config"] = raw
    return state, cfg, lineage


def write_model_dir(path: str | Path, state: dict, config: dict, lineage: dict, tokenizer: str | None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "model.pt")
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    keep = {k: v for k, v in lineage.items() if k not in ("config", "tokenizer")}
    (path / "lineage.json").write_text(json.dumps(keep, indent=2), encoding="utf-8")
    if tokenizer and Path(tokenizer).resolve() != (path / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer, path / "tokenizer.model")
    return path
