"""Step 3: fine-tuning on source-language task data with the embeddings frozen: sequence and
sentence-pair classification (classification.py) and extractive QA (qa.py); common.py holds what
both share and the fine-tuned model directory that step 4 reads."""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.config import FinetuneConfig


def run(cfg: FinetuneConfig, ds_config_path: str, resume: bool = False) -> Path:
    """Fine-tune for `cfg.finetune.task`: extractive QA for mlqa/squad, classification otherwise."""
    from ds_minimodel.steps.finetune import classification, qa

    return (qa if cfg.finetune.is_qa else classification).run(cfg, ds_config_path, resume)
