"""What both kinds of fine-tuning share: the checked source model, the shuffled loader over
pre-encoded rows, the validation sample, and the fine-tuned model directory (written by
`export_finetuned`, read back by `load_finetuned` for step 4).

The whole embedding module (word, position, segment tables and its layer norm) stays frozen, so
that a language pack trained against the pretrained embedding layer can be plugged in later
(step 4). The MLM heads are kept in the state dict but frozen and never run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from ds_minimodel.artefacts.modeldir import read_model_dir, write_model_dir
from ds_minimodel.config import FinetuneConfig, ModelConfig, to_dict
from ds_minimodel.errors import UserError
from ds_minimodel.model import QuestionAnswering, SequenceClassifier
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.training.checkpoint import consolidate


def load_source(cfg: FinetuneConfig) -> tuple[dict, ModelConfig, dict, Tokenizer]:
    """(state, model config, lineage, tokenizer) of the pretrained model to fine-tune, checked."""
    state, src_cfg, lineage = read_model_dir(cfg.finetune.model_dir)
    if not lineage.get("tokenizer"):
        raise UserError(f"{cfg.finetune.model_dir} has no tokenizer.model: fine-tuning needs the source tokenizer")
    if lineage.get("kind") == "minipost" or lineage.get("kind") == "finetune":
        raise UserError(f"{cfg.finetune.model_dir} is a {lineage['kind']} model; fine-tune the full pretrained model")
    tok = load_tokenizer(lineage["tokenizer"])
    if tok.vocab_size > src_cfg.vocab_size:  # fewer is normal: a padded embedding table
        raise UserError(f"tokenizer of {cfg.finetune.model_dir} has {tok.vocab_size} pieces, the model's embedding "
                        f"table only {src_cfg.vocab_size} rows")
    # RoBERTa positions start at pad_token_id + 1; BERT's at 0.
    usable = src_cfg.max_positions - (src_cfg.pad_token_id + 1 if src_cfg.position_style == "roberta" else 0)
    if cfg.finetune.max_len > usable:
        raise UserError(f"max_len {cfg.finetune.max_len} does not fit {cfg.finetune.model_dir}: its position table holds "
                        f"{usable} tokens per sequence")
    return state, src_cfg, lineage, tok


class ShuffledLoader:
    """Shuffled epochs over n pre-encoded rows, split over ranks like the MLM loader: one step
    takes micro_batch * grad_accum * world rows; micro-batch m of rank r is the slice at
    (m * world + r) * micro_batch. `batch_fn(indices)` builds a micro-batch. Its position is part
    of the checkpoint."""

    def __init__(self, n: int, batch_fn: Callable[[np.ndarray], dict], micro_batch_size: int, grad_accum: int,
                 rank: int, world_size: int, seed: int, what: str = "training examples"):
        self.n, self.batch_fn = n, batch_fn
        self.mb, self.ga, self.rank, self.world, self.seed = micro_batch_size, grad_accum, rank, world_size, seed
        self.global_batch = micro_batch_size * grad_accum * world_size
        if self.global_batch > n:
            raise UserError(f"{n} {what} are fewer than one global batch of {self.global_batch}")
        self.epoch = self.position = 0

    def _order(self) -> np.ndarray:
        return np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(self.n)

    def next_step(self) -> list[dict]:
        if self.position + self.global_batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order()
        out = []
        for m in range(self.ga):
            start = self.position + (m * self.world + self.rank) * self.mb
            out.append(self.batch_fn(order[start:start + self.mb]))
        self.position += self.global_batch
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "examples": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("examples") != self.n:
            raise UserError("cannot resume: the checkpoint's task data or seed differ from this run's")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def sample(items: list, n: int, seed: int) -> list:
    """A seeded sample of n items in their original order (all of them for n = 0 or n >= len)."""
    if not n or n >= len(items):
        return items
    pick = np.random.Generator(np.random.PCG64(seed)).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(pick)]


def export_finetuned(run_dir: Path, checkpointer, cfg: FinetuneConfig, model_cfg: ModelConfig, lineage: dict,
                     task_record: dict) -> None:
    """final/ of a fine-tuning run; `task_record["kind"]` ("classification" | "qa") tells the
    loaders which head the state dict carries."""
    final, _ = consolidate(checkpointer.dir)
    config = {"model": to_dict(model_cfg), "finetune": to_dict(cfg), "task": task_record}
    write_model_dir(run_dir / "final", final, config,
                    {"kind": "finetune", "task_kind": task_record["kind"], "source": str(cfg.finetune.model_dir),
                     "body_fingerprints": lineage["body_fingerprints"]}, lineage["tokenizer"])


def load_finetuned(model_dir: str | Path) -> tuple[SequenceClassifier | QuestionAnswering, dict, dict]:
    """A fine-tuned model directory as (model in eval mode, its config, its lineage), whichever
    task head it carries (config["task"]["kind"]; directories from before QA are classifiers)."""
    state, model_cfg, lineage = read_model_dir(model_dir)
    if lineage.get("kind") != "finetune":
        raise UserError(f"{model_dir} is not a fine-tuned model (lineage kind {lineage.get('kind')!r})")
    task = lineage["config"]["task"]
    kind = task.get("kind", "classification")
    if kind == "qa":
        model = QuestionAnswering(model_cfg)
    elif kind == "classification":
        model = SequenceClassifier(model_cfg, len(task["label_names"]), task["head_dropout"],
                                   task.get("pooling", "cls"))
    else:
        raise UserError(f"{model_dir}: unknown task kind {kind!r} in config.json")
    model.load_state_dict(state, strict=True)
    return model.eval(), lineage["config"], lineage


def load_classifier(model_dir: str | Path) -> tuple[SequenceClassifier, dict, dict]:
    """A fine-tuned classifier directory as (model in eval mode, its config, its lineage)."""
    model, config, lineage = load_finetuned(model_dir)
    if not isinstance(model, SequenceClassifier):
        raise UserError(f"{model_dir} is an extractive QA model, not a classifier (load it with load_finetuned)")
    return model, config, lineage


def with_vocab(model: SequenceClassifier | QuestionAnswering, vocab_size: int):
    """An empty copy of `model`'s architecture for another vocabulary size (for a plugged pack)."""
    return model.with_config(dataclasses.replace(model.encoder.cfg, vocab_size=vocab_size))
