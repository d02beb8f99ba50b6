"""Step 3: fine-tune the body + a classification head on source-language task data.

The whole embedding module (word, position, segment tables and its layer norm) stays frozen, so
that a language pack trained against the pretrained embedding layer can be plugged in later
(step 4). The MLM heads are kept in the state dict but frozen and never run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ds_minimodel import train as loop
from ds_minimodel.checkpoint import consolidate
from ds_minimodel.config import FinetuneConfig, to_dict
from ds_minimodel.errors import UserError
from ds_minimodel.job import JobSpec, run_job
from ds_minimodel.model import SequenceClassifier
from ds_minimodel.modeldir import read_model_dir, write_model_dir
from ds_minimodel.tasks.batching import encode_classification, pad_sequences
from ds_minimodel.tasks.formats import TaskData
from ds_minimodel.tokenizer import Tokenizer

FROZEN_PREFIXES = ("encoder.embeddings.", "encoder.lm_head.", "encoder.mid_head.")


def load_task(cfg: FinetuneConfig) -> TaskData:
    if cfg.task == "bible-genre":
        from ds_minimodel.tasks.bible import verse_genre_task

        return verse_genre_task(seed=cfg.train.seed)
    from ds_minimodel.tasks.formats import task_data

    return task_data(cfg.task, cfg.task_path, test_languages=["en"], train_language="en")


class ClassificationLoader:
    """Shuffled epochs of pre-tokenised examples, split over ranks like the MLM loader: one step
    takes micro_batch * grad_accum * world examples; micro-batch m of rank r is the slice at
    (m * world + r) * micro_batch. Its position is part of the checkpoint."""

    def __init__(self, encoded: list[list[int]], labels: list[int], pad_id: int, micro_batch_size: int,
                 grad_accum: int, rank: int, world_size: int, seed: int):
        self.encoded, self.labels, self.pad_id = encoded, torch.tensor(labels), pad_id
        self.mb, self.ga, self.rank, self.world, self.seed = micro_batch_size, grad_accum, rank, world_size, seed
        self.global_batch = micro_batch_size * grad_accum * world_size
        if self.global_batch > len(encoded):
            raise UserError(f"{len(encoded)} training examples are fewer than one global batch of {self.global_batch}")
        self.epoch = self.position = 0

    def _order(self) -> np.ndarray:
        return np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(len(self.encoded))

    def next_step(self) -> list[dict]:
        if self.position + self.global_batch > len(self.encoded):
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order()
        out = []
        for m in range(self.ga):
            start = self.position + (m * self.world + self.rank) * self.mb
            idx = order[start:start + self.mb]
            ids, mask = pad_sequences([self.encoded[i] for i in idx], self.pad_id)
            out.append({"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]})
        self.position += self.global_batch
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "examples": len(self.encoded)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("examples") != len(self.encoded):
            raise UserError("cannot resume: the checkpoint's task data or seed differ from this run's")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@torch.no_grad()
def accuracy(model_or_engine, encoded: list[list[int]], labels: list[int], pad_id: int, batch_size: int,
             rank: int = 0, world_size: int = 1) -> float:
    """Accuracy over every example; ranks take interleaved batches and sum their counts."""
    was_training = model_or_engine.training
    model_or_engine.eval()
    device = next(model_or_engine.parameters()).device
    starts = list(range(0, len(encoded), batch_size))
    rounds = -(-len(starts) // world_size)  # equal forward count on every rank (ZeRO-3 gathers)
    correct = 0
    for r in range(rounds):
        i = r * world_size + rank
        chunk = range(starts[i], min(starts[i] + batch_size, len(encoded))) if i < len(starts) else range(0, 1)
        ids, mask = pad_sequences([encoded[j] for j in chunk], pad_id)
        lab = torch.tensor([labels[j] for j in chunk])
        out = model_or_engine(input_ids=ids.to(device), labels=lab.to(device), attention_mask=mask.to(device))
        correct += int(out["num_correct"]) if i < len(starts) else 0
    model_or_engine.train(was_training)
    return loop.all_reduce_sum([correct], device)[0] / max(len(encoded), 1)


def run(cfg: FinetuneConfig, ds_config_path: str, resume: bool = False) -> Path:
    state, src_cfg, lineage = read_model_dir(cfg.model_dir)
    if not lineage.get("tokenizer"):
        raise UserError(f"{cfg.model_dir} has no tokenizer.model: fine-tuning needs the source tokenizer")
    if lineage.get("kind") == "minipost" or lineage.get("kind") == "finetune":
        raise UserError(f"{cfg.model_dir} is a {lineage['kind']} model; fine-tune the full pretrained model")
    tok = Tokenizer.load(lineage["tokenizer"])
    if tok.vocab_size != src_cfg.vocab_size:
        raise UserError(f"tokenizer of {cfg.model_dir} has {tok.vocab_size} pieces, the model {src_cfg.vocab_size}")
    task = load_task(cfg)
    if task.is_qa:
        raise UserError("extractive QA fine-tuning is not wired into this launcher yet; use a classification task")
    train_ids = encode_classification(task.train, tok, cfg.max_len)
    valid = task.validation
    if cfg.eval_examples and cfg.eval_examples < len(valid):  # a seeded sample: the split is sorted by class
        pick = np.random.Generator(np.random.PCG64(cfg.train.seed)).choice(len(valid), cfg.eval_examples, replace=False)
        valid = [valid[i] for i in sorted(pick)]
    valid_ids = encode_classification(valid, tok, cfg.max_len)
    model_cfg = src_cfg

    def make_model(ds_config: dict) -> SequenceClassifier:
        torch.manual_seed(cfg.train.seed)
        model = SequenceClassifier(model_cfg, len(task.label_names), cfg.head_dropout, cfg.pooling)
        model.encoder.load_state_dict(state, strict=True)
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN_PREFIXES))
        return model

    def make_loader(mb, ga, rank, world):
        return ClassificationLoader(train_ids, [ex.label for ex in task.train], tok.pad_id, mb, ga, rank, world,
                                    cfg.train.seed)

    def make_evaluate(engine, dist):
        labels = [ex.label for ex in valid]
        return lambda: {"valid_accuracy": accuracy(engine, valid_ids, labels, tok.pad_id, 32, dist.rank,
                                                   dist.world_size)}

    def micro_flops(batch: dict) -> int:
        from ds_minimodel.flops import step_flops

        B, T = batch["input_ids"].shape
        return step_flops(model_cfg, "finetune", B, T, 0, num_classes=len(task.label_names)).total

    def finalize(run_dir: Path, checkpointer) -> None:
        final, _ = consolidate(checkpointer.dir)
        config = {"model": to_dict(model_cfg), "finetune": to_dict(cfg),
                  "task": {"name": task.name, "label_names": list(task.label_names), "max_len": cfg.max_len,
                           "head_dropout": cfg.head_dropout, "pooling": cfg.pooling}}
        write_model_dir(run_dir / "final", final, config,
                        {"kind": "finetune", "source": str(cfg.model_dir),
                         "body_fingerprints": lineage["body_fingerprints"]}, lineage["tokenizer"])

    spec = JobSpec(kind="finetune", model_config=to_dict(model_cfg), make_loader=make_loader, make_model=make_model,
                   loss_keys=("loss",), finalize=finalize, make_evaluate=make_evaluate, micro_flops=micro_flops)
    return run_job(cfg, spec, ds_config_path, resume)


def load_classifier(model_dir: str | Path) -> tuple[SequenceClassifier, dict, dict]:
    """A fine-tuned model directory as (model in eval mode, its config, its lineage)."""
    state, model_cfg, lineage = read_model_dir(model_dir)
    if lineage.get("kind") != "finetune":
        raise UserError(f"{model_dir} is not a fine-tuned model (lineage kind {lineage.get('kind')!r})")
    task = lineage["config"]["task"]
    model = SequenceClassifier(model_cfg, len(task["label_names"]), task["head_dropout"], task.get("pooling", "cls"))
    model.load_state_dict(state, strict=True)
    return model.eval(), lineage["config"], lineage


def with_vocab(model: SequenceClassifier, vocab_size: int) -> SequenceClassifier:
    """An empty copy of `model`'s architecture for another vocabulary size (for a plugged pack)."""
    cfg = dataclasses.replace(model.encoder.cfg, vocab_size=vocab_size)
    return SequenceClassifier(cfg, model.out.out_features, model.dropout.p, model.pooling)
