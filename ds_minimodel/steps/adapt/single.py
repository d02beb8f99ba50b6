"""Step 2 for one target language: its embeddings through the frozen (mini-)model, one pack."""

from __future__ import annotations

from pathlib import Path

import torch

from ds_minimodel.artefacts.langpack import save_pack
from ds_minimodel.config import AdaptConfig
from ds_minimodel.data.user_bible import pack_provenance
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.adapt.common import (
    check_ds_config,
    check_target,
    pack_info,
    read_body,
    start_state,
)
from ds_minimodel.steps.mlm_job import open_corpus, run_mlm_job
from ds_minimodel.training.checkpoint import consolidate


def run(cfg: AdaptConfig, ds_config_path: str, resume: bool = False) -> Path:
    shards = open_corpus(cfg.data.path)
    target_tok = shards.tokenizer()
    body = read_body(cfg)
    check_target(shards, body, cfg.data.path, cfg.adapt.language, f"adapt.language={cfg.adapt.language}")
    check_ds_config(ds_config_path)
    start, model_cfg, init_record = start_state(body, shards, cfg)

    def make_model(ds_config: dict) -> MLMEncoder:
        torch.manual_seed(cfg.train.seed)
        model = MLMEncoder(model_cfg)
        model.load_state_dict(start, strict=True)
        set_requires_grad_for_step(model, body.kind)
        return model

    def finalize(run_dir: Path, checkpointer) -> None:
        final, _ = consolidate(checkpointer.dir)
        info = pack_info(cfg, body, target_tok, cfg.adapt.language, init_record, model_cfg.num_layers,
                         **pack_provenance(shards.index))  # a user's Bible: where its test verses are
        save_pack(run_dir / "pack", info, final["embeddings.word"], final["lm_head.bias"], target_tok.path)

    # Checkpoints without the frozen body: make_model rebuilds it from adapt.model_dir.
    return run_mlm_job(cfg, model_cfg, shards, ds_config_path, resume, make_model=make_model, kind=body.kind,
                       route="final", loss_keys=("loss", "final_loss"), finalize=finalize, checkpoint_frozen=False)
