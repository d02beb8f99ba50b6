"""Step 3 for extractive QA: body + span head on English SQuAD-format data, embeddings frozen.

The zero-shot MLQA setting (Lewis et al. 2020; the paper's QA task): fine-tune on English SQuAD
v1.1 train, validate on an English dev set (MLQA's, or SQuAD's dev-v1.1.json), then step 4 scores
the target-language test sets with each language pack plugged in (`transfer.evaluate_qa`).

Training rows are the windows (`tasks.batching.encode_qa`), not the questions: a long context
gives several features, each labelled with its answer's token span or with the first token when
the window does not hold the answer, and every feature is a training row, as in Hugging Face's
run_qa. Validation decodes the best span per question over all its windows and reports
SQuAD/MLQA exact match and F1 in percent, as the official scripts print them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ds_minimodel.config import FinetuneConfig, to_dict
from ds_minimodel.errors import UserError
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import QuestionAnswering
from ds_minimodel.steps.finetune.common import (
    ShuffledLoader,
    export_finetuned,
    load_source,
    sample,
)
from ds_minimodel.tasks.batching import QAFeatures, encode_qa, qa_predictions
from ds_minimodel.tasks.formats import QAExample, TaskData, load_task, task_file
from ds_minimodel.tasks.metrics import qa_metrics
from ds_minimodel.tokenizers.layout import layout_for
from ds_minimodel.training import loop
from ds_minimodel.training.job import JobSpec, run_job

TRAIN_LANGUAGE = "en"
EVAL_BATCH = 32
# Logit given to the positions a trimmed batch did not have, when windows of different batches
# are put back into one [features, max_len] matrix: never picked by the span decoder.
_PAD_LOGIT = -1e4


def answer_language(task: str, language: str) -> str | None:
    """The `lang` of tasks.metrics.qa_metrics: SQuAD v1.1's own normalisation for task "squad" in
    English, MLQA's (per-language articles, Unicode punctuation) for everything else."""
    return None if task == "squad" and language == "en" else language


def load_qa_task(cfg: FinetuneConfig) -> TaskData:
    """English train and validation; `test` is MLQA's English test set when the task directory
    has one, else the validation set again (meta["test_split"] says which)."""
    train = load_task("mlqa", cfg.finetune.task_path, TRAIN_LANGUAGE, "train")
    validation = load_task("mlqa", cfg.finetune.task_path, TRAIN_LANGUAGE, "validation")
    try:
        task_file("mlqa", cfg.finetune.task_path, TRAIN_LANGUAGE, "test")
        test, split = load_task("mlqa", cfg.finetune.task_path, TRAIN_LANGUAGE, "test"), "test"
    except UserError:
        test, split = validation, "validation"
    return TaskData(cfg.finetune.task, "qa", (), train, validation, test, TRAIN_LANGUAGE, TRAIN_LANGUAGE,
                    meta={"source": str(cfg.finetune.task_path), "test_split": split})


def encode_for(model_cfg, examples: list[QAExample], tok, task: dict) -> QAFeatures:
    """Features of `examples` for a model of `model_cfg`, with the saved task's window settings."""
    return encode_qa(examples, tok, task["max_len"], task["doc_stride"], task["max_query_len"],
                     layout_for(model_cfg))


@torch.no_grad()
def qa_scores(model_or_engine, features: QAFeatures, examples: list[QAExample], batch_size: int = EVAL_BATCH,
              rank: int = 0, world_size: int = 1, lang: str | None = None) -> dict:
    """{"exact_match", "f1"} in percent over `examples` (`features` = encode_qa(examples, ...)).

    Questions are dealt to ranks round-robin with all their windows, so each question's best span
    is decided on one rank; every rank runs the same number of forwards (ZeRO-3 gathers parameters
    collectively: a rank with fewer batches repeats a dummy one); the score sums are all-reduced.
    """
    if not examples:
        raise UserError("no QA examples to score")
    was_training = model_or_engine.training
    model_or_engine.eval()
    device = next(model_or_engine.parameters()).device
    owner = [ei % world_size for ei in features.example_index]
    mine = [f for f, r in enumerate(owner) if r == rank]
    rounds = max(-(-owner.count(r) // batch_size) for r in range(world_size))
    width = features.input_ids.shape[1]
    starts, ends = [], []
    for i in range(rounds):
        idx = mine[i * batch_size:(i + 1) * batch_size]
        inputs = {k: v for k, v in features.batch(idx or [0]).items() if not k.endswith("_positions")}
        out = model_or_engine(**loop.to_device(inputs, device))
        if idx:
            for key, acc in (("start_logits", starts), ("end_logits", ends)):
                logits = out[key].float().cpu()
                acc.append(F.pad(logits, (0, width - logits.shape[1]), value=_PAD_LOGIT))
    model_or_engine.train(was_training)
    own_examples = [ex for i, ex in enumerate(examples) if i % world_size == rank]
    sums = [0.0, 0.0, 0.0]
    if own_examples:
        preds = qa_predictions(features.select(mine), examples, torch.cat(starts), torch.cat(ends))
        m = qa_metrics(preds, own_examples, lang)
        sums = [m["exact_match"] * m["count"], m["f1"] * m["count"], float(m["count"])]
    em, f1, n = loop.all_reduce_sum(sums, device)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def run(cfg: FinetuneConfig, ds_config_path: str, resume: bool = False) -> Path:
    state, model_cfg, lineage, tok = load_source(cfg)
    task = load_qa_task(cfg)
    record = {"kind": "qa", "name": cfg.finetune.task, "max_len": cfg.finetune.max_len, "doc_stride": cfg.finetune.doc_stride,
              "max_query_len": cfg.finetune.max_query_len, "layout": layout_for(model_cfg).family}
    train = encode_for(model_cfg, task.train, tok, record)
    if len(train.unlocated) == len(task.train):
        raise UserError(f"no training answer of {cfg.finetune.task_path} could be located in its context")
    if not task.validation:  # checked before the process group starts, like everything else
        raise UserError(f"the English validation set under {cfg.finetune.task_path} has no questions")
    valid = sample(task.validation, cfg.finetune.eval_examples, cfg.train.seed)
    valid_features = encode_for(model_cfg, valid, tok, record)
    lang = answer_language(cfg.finetune.task, TRAIN_LANGUAGE)

    def make_model(ds_config: dict) -> QuestionAnswering:
        torch.manual_seed(cfg.train.seed)
        model = QuestionAnswering(model_cfg)
        model.encoder.load_state_dict(state, strict=True)
        set_requires_grad_for_step(model, "finetune_qa")
        return model

    def make_loader(mb, ga, rank, world):
        return ShuffledLoader(len(train), train.batch, mb, ga, rank, world, cfg.train.seed,
                              what=f"training features (windows of {len(task.train)} questions)")

    def make_evaluate(engine, dist):
        def evaluate() -> dict:
            s = qa_scores(engine, valid_features, valid, EVAL_BATCH, dist.rank, dist.world_size, lang)
            return {"valid_exact_match": s["exact_match"], "valid_f1": s["f1"]}
        return evaluate

    def micro_flops(batch: dict) -> int:
        from ds_minimodel.method.flops import step_flops

        B, T = batch["input_ids"].shape
        return step_flops(model_cfg, "finetune_qa", B, T, 0).total

    def finalize(run_dir: Path, checkpointer) -> None:
        export_finetuned(run_dir, checkpointer, cfg, model_cfg, lineage, record)

    spec = JobSpec(kind="finetune_qa", model_config=to_dict(model_cfg), make_loader=make_loader, make_model=make_model,
                   loss_keys=("loss",), finalize=finalize, make_evaluate=make_evaluate, micro_flops=micro_flops)
    return run_job(cfg, spec, ds_config_path, resume)
