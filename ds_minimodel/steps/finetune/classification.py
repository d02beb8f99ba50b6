"""Step 3 for classification: body + a classification head on source-language task data
(bible-genre, bible-testament, XNLI, PAWS-X), embeddings frozen (see common.py).

Inputs are packed as the model family expects
(`tokenizers.layout.layout_for`: RoBERTa `<s> A </s></s> B </s>`, BERT `[CLS] A [SEP] B [SEP]` with
token_type_ids).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ds_minimodel.config import FinetuneConfig, to_dict
from ds_minimodel.errors import UserError
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import SequenceClassifier
from ds_minimodel.steps.finetune.common import (
    ShuffledLoader,
    export_finetuned,
    load_source,
    sample,
)
from ds_minimodel.tasks.batching import EncodedTexts, encode_texts, padded_batch
from ds_minimodel.tasks.formats import TaskData
from ds_minimodel.tokenizers.layout import layout_for
from ds_minimodel.training import loop
from ds_minimodel.training.job import JobSpec, run_job


def load_task(cfg: FinetuneConfig) -> TaskData:
    if cfg.finetune.task == "bible-genre":
        from ds_minimodel.tasks.bible import verse_genre_task

        return verse_genre_task(seed=cfg.train.seed)
    if cfg.finetune.task == "bible-testament":
        from ds_minimodel.tasks.bible import verse_testament_task

        return verse_testament_task(seed=cfg.train.seed)
    from ds_minimodel.tasks.formats import task_data

    return task_data(cfg.finetune.task, cfg.finetune.task_path, test_languages=["en"], train_language="en")


class ClassificationLoader(ShuffledLoader):
    """Shuffled epochs of pre-tokenised examples (and their token_type_ids for BERT layouts)."""

    def __init__(self, encoded: list[list[int]], labels: list[int], pad_id: int, micro_batch_size: int,
                 grad_accum: int, rank: int, world_size: int, seed: int, type_ids: list[list[int]] | None = None):
        enc, labels_t = EncodedTexts(encoded, type_ids), torch.tensor(labels)

        def batch(idx):
            return {**padded_batch(enc, idx, pad_id), "labels": labels_t[idx]}

        super().__init__(len(encoded), batch, micro_batch_size, grad_accum, rank, world_size, seed)


def correct_flags(model_or_engine, encoded: list[list[int]], labels: list[int], pad_id: int, batch_size: int,
                  rank: int = 0, world_size: int = 1, type_ids: list[list[int]] | None = None) -> list[bool]:
    """Whether the classifier gets each example right (argmax of its logits == the label), for
    the examples this rank scores, in order (`predictions`' ranks and batches)."""
    answers = predictions(model_or_engine, encoded, pad_id, batch_size, rank, world_size, type_ids)
    mine = [labels[i] for start in range(rank * batch_size, len(encoded), world_size * batch_size)
            for i in range(start, min(start + batch_size, len(encoded)))]
    return [a == label for a, label in zip(answers, mine)]


def predictions(model_or_engine, encoded: list[list[int]], pad_id: int, batch_size: int, rank: int = 0,
                world_size: int = 1, type_ids: list[list[int]] | None = None) -> list[int]:
    """The classifier's answer (argmax of its logits) on each example this rank scores, in order:
    ranks take interleaved batches of `batch_size`, and every rank runs the same number of
    forwards (ZeRO-3 gathers parameters in each)."""
    return _per_example(model_or_engine, encoded, pad_id, batch_size, rank, world_size, type_ids,
                        lambda logits: logits.argmax(-1).cpu().tolist())


def probabilities(model_or_engine, encoded: list[list[int]], pad_id: int, batch_size: int, rank: int = 0,
                  world_size: int = 1, type_ids: list[list[int]] | None = None) -> list[list[float]]:
    """The classifier's class probabilities (softmax of its logits, in float64) on each example
    this rank scores, in `predictions`' order: for a ranking metric (ROC AUC from P(class 1))."""
    return _per_example(model_or_engine, encoded, pad_id, batch_size, rank, world_size, type_ids,
                        lambda logits: torch.softmax(logits.double(), dim=-1).cpu().tolist())


@torch.no_grad()
def _per_example(model_or_engine, encoded, pad_id, batch_size, rank, world_size, type_ids, per_batch) -> list:
    """`per_batch(logits)` of this rank's batches, concatenated (see `predictions`)."""
    was_training = model_or_engine.training
    model_or_engine.eval()
    device = next(model_or_engine.parameters()).device
    enc = EncodedTexts(encoded, type_ids)
    starts = list(range(0, len(encoded), batch_size))
    rounds = -(-len(starts) // world_size)
    out: list = []
    for r in range(rounds):
        i = r * world_size + rank
        chunk = range(starts[i], min(starts[i] + batch_size, len(encoded))) if i < len(starts) else range(0, 1)
        logits = model_or_engine(**loop.to_device(padded_batch(enc, chunk, pad_id), device))["logits"]
        if i < len(starts):  # a rank with no batch left runs a dummy forward and keeps nothing
            out += per_batch(logits)
    model_or_engine.train(was_training)
    return out


def accuracy(model_or_engine, encoded: list[list[int]], labels: list[int], pad_id: int, batch_size: int,
             rank: int = 0, world_size: int = 1, type_ids: list[list[int]] | None = None) -> float:
    """Accuracy over every example, summed over ranks: fine-tuning's validation, step 4's
    transfer and the compute-budget study all score a classifier with it."""
    flags = correct_flags(model_or_engine, encoded, labels, pad_id, batch_size, rank, world_size, type_ids)
    device = next(model_or_engine.parameters()).device
    return loop.all_reduce_sum([sum(flags)], device)[0] / max(len(encoded), 1)


def run(cfg: FinetuneConfig, ds_config_path: str, resume: bool = False) -> Path:
    state, model_cfg, lineage, tok = load_source(cfg)
    task = load_task(cfg)
    if task.is_qa:
        raise UserError(f"task {cfg.finetune.task} is extractive QA; fine-tune it with finetune.task=mlqa or finetune.task=squad")
    layout = layout_for(model_cfg)
    train_enc = encode_texts(task.train, tok, cfg.finetune.max_len, layout)
    # A seeded sample: the split is sorted by class.
    valid = sample(task.validation, cfg.finetune.eval_examples, cfg.train.seed)
    valid_enc = encode_texts(valid, tok, cfg.finetune.max_len, layout)

    def make_model(ds_config: dict) -> SequenceClassifier:
        torch.manual_seed(cfg.train.seed)
        model = SequenceClassifier(model_cfg, len(task.label_names), cfg.finetune.head_dropout, cfg.finetune.pooling)
        model.encoder.load_state_dict(state, strict=True)
        set_requires_grad_for_step(model, "finetune")
        return model

    def make_loader(mb, ga, rank, world):
        return ClassificationLoader(train_enc.ids, [ex.label for ex in task.train], tok.pad_id, mb, ga, rank, world,
                                    cfg.train.seed, train_enc.type_ids)

    def make_evaluate(engine, dist):
        labels = [ex.label for ex in valid]
        return lambda: {"valid_accuracy": accuracy(engine, valid_enc.ids, labels, tok.pad_id, 32, dist.rank,
                                                   dist.world_size, valid_enc.type_ids)}

    def micro_flops(batch: dict) -> int:
        from ds_minimodel.method.flops import step_flops

        B, T = batch["input_ids"].shape
        return step_flops(model_cfg, "finetune", B, T, 0, num_classes=len(task.label_names)).total

    def finalize(run_dir: Path, checkpointer) -> None:
        export_finetuned(run_dir, checkpointer, cfg, model_cfg, lineage,
                         {"kind": "classification", "name": task.name, "label_names": list(task.label_names),
                          "max_len": cfg.finetune.max_len, "head_dropout": cfg.finetune.head_dropout, "pooling": cfg.finetune.pooling})

    spec = JobSpec(kind="finetune", model_config=to_dict(model_cfg), make_loader=make_loader, make_model=make_model,
                   loss_keys=("loss",), finalize=finalize, make_evaluate=make_evaluate, micro_flops=micro_flops)
    return run_job(cfg, spec, ds_config_path, resume)
