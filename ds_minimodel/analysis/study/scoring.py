"""Scoring a pack-equivalent with the transfer metric (accuracy, or verse retrieval), and the
content-keyed cache that makes a study resumable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ds_minimodel.analysis.study.matching import Point
from ds_minimodel.analysis.study.runs import (
    INIT_TAG,
    StudyRun,
    checkpoint_tensors,
    init_tensors,
)
from ds_minimodel.artefacts.langpack import PackInfo, check_compatible
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import plug_embeddings
from ds_minimodel.config import FinetuneConfig, from_dict
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.finetune.classification import accuracy, load_task
from ds_minimodel.steps.finetune.common import load_classifier
from ds_minimodel.steps.transfer import mean_pooled, plugged_model
from ds_minimodel.tasks.batching import encode_texts, layout_for
from ds_minimodel.tasks.bible import (
    majority_rate,
    retrieval_sample,
    verse_retrieval_pairs,
)
from ds_minimodel.tasks.metrics import retrieval_metrics
from ds_minimodel.tokenizer import Tokenizer
from ds_minimodel.training.checkpoint import write_atomic

METRICS = ("accuracy", "retrieval_top1")


def tensors_key(info: PackInfo, tensors: dict) -> str:
    h = hashlib.sha256(f"{info.language}:{info.tokenizer_fingerprint}:{info.body_fingerprint}".encode())
    for name in ("word", "output_bias"):
        t = tensors[name].detach().float().contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_id(path: Path) -> str:
    """Path, size and mtime of a model's weights (of an HF directory's config.json if no model.pt)."""
    if not path.is_file():
        path = next((p for p in (path.parent / "model.safetensors", path.parent / "pytorch_model.bin",
                                 path.parent / "config.json") if p.is_file()), path.parent)
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class AccuracyScorer:
    """Target-language test accuracy of a source-fine-tuned classifier with a pack plugged in.

    The test set is the task's (for the Bible tasks: the held-out chapters, paired with English);
    `eval_examples` takes a fixed seeded subset, the same for every checkpoint. Examples are
    batched in order of length (less padding; the count of correct answers does not depend on
    the order).
    """
    metric = "accuracy"

    def __init__(self, model_dir: str | Path, eval_examples: int | None = None, seed: int = 0, batch_size: int = 32):

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise MissingFileError(f"--model {model_dir}: the fine-tuned model directory does not exist")
        if eval_examples is not None and eval_examples < 1:
            raise InvalidValueError(f"eval examples must be positive, got {eval_examples}")
        self.model, config, self.lineage = load_classifier(model_dir)
        self.task = load_task(from_dict(FinetuneConfig, config["finetune"]))
        self.max_len = int(config["task"]["max_len"])
        self.batch_size, self.eval_examples, self.seed = batch_size, eval_examples, seed
        src_test = self.task.tests[self.task.train_language]
        src_tok = Tokenizer.load(self.lineage["tokenizer"])
        # Packed as the model family expects (BERT: [CLS] A [SEP] B [SEP] with segment ids).
        self.layout = layout_for(self.model.encoder.cfg)
        src = encode_texts(src_test, src_tok, self.max_len, self.layout)
        self.source_accuracy = accuracy(self.model, src.ids, [ex.label for ex in src_test], src_tok.pad_id,
                                        batch_size, type_ids=src.type_ids)
        self._encoded: dict[tuple[str, str], tuple[list, list | None, list, int]] = {}
        self.identity = {"metric": self.metric, "model": _file_id(self.model_dir / "model.pt"), "task": self.task.name,
                         "eval_examples": eval_examples, "seed": seed, "max_len": self.max_len}

    def _subset(self, examples: list) -> list:
        if self.eval_examples is None or self.eval_examples >= len(examples):
            return examples

        pick = np.random.Generator(np.random.PCG64(self.seed)).choice(len(examples), self.eval_examples, replace=False)
        return [examples[i] for i in sorted(pick)]

    def references(self, language: str) -> dict:
        test = self._subset(self.task.test_in(language))

        missing = self.task.meta.get("target_tests", {}).get(language, {}).get("missing")
        return {"source_accuracy": self.source_accuracy, "chance_majority": majority_rate(test),
                "test_examples": len(test), **({"test_verses_missing_in_language": missing} if missing else {})}

    def _encode(self, info: PackInfo, tokenizer_path: str):

        key = (info.language, info.tokenizer_fingerprint)
        if key not in self._encoded:
            tok = Tokenizer.load(tokenizer_path)
            test = self._subset(self.task.test_in(info.language))  # the pack's language picks the test set
            enc = encode_texts(test, tok, self.max_len, self.layout)
            order = sorted(range(len(enc.ids)), key=lambda i: (len(enc.ids[i]), i))
            types = [enc.type_ids[i] for i in order] if enc.type_ids is not None else None
            self._encoded[key] = ([enc.ids[i] for i in order], types, [test[i].label for i in order], tok.pad_id)
        return self._encoded[key]

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> float:

        encoded, types, labels, pad_id = self._encode(info, tokenizer_path)
        plugged = plugged_model(self.model, info, tensors, self.lineage, str(self.model_dir))
        return accuracy(plugged, encoded, labels, pad_id, self.batch_size, type_ids=types)


class RetrievalScorer:
    """English<->target verse retrieval top-1 (mean of both directions) on held-out verses:
    English through the pretrained model with its own tokenizer (pooled once), the target
    language through the same body with each pack plugged in (as transfer.evaluate_retrieval).
    The pack's language picks the target verses: the same held-out English verses for every
    language, less those its Bible lacks."""
    metric = "retrieval_top1"

    def __init__(self, pretrained_dir: str | Path, pairs: int = 1000, layer: int | None = None):

        self.pretrained_dir = Path(pretrained_dir)
        if not self.pretrained_dir.is_dir():
            raise MissingFileError(f"--pretrained {pretrained_dir}: the pretrained model directory does not exist")
        self.state, self.cfg, self.lineage = read_model_dir(pretrained_dir)
        if not self.lineage.get("tokenizer"):
            raise UserError(f"{pretrained_dir} has no tokenizer.model: retrieval needs the source tokenizer")
        self.layer = layer or max(1, self.cfg.num_layers // 2)
        self.max_pairs = pairs
        self.sample = retrieval_sample("heldout", max_pairs=pairs)  # (verse id, English), every language's superset
        self._row = {vid: i for i, (vid, _) in enumerate(self.sample)}
        self._pairs: dict[str, list] = {}
        self.max_len = min(128, self.cfg.max_positions - self.cfg.pad_token_id - 1)
        model = MLMEncoder(self.cfg)
        model.load_state_dict(self.state, strict=True)
        self.english = mean_pooled(model, [text for _, text in self.sample], Tokenizer.load(self.lineage["tokenizer"]),
                                   self.layer, max_len=self.max_len)
        self.identity = {"metric": self.metric, "model": _file_id(self.pretrained_dir / "model.pt"),
                         "pairs": len(self.sample), "layer": self.layer}

    def pairs_for(self, language: str):
        """The held-out verse pairs of `language` (VersePairs: its meta says what was dropped)."""

        if language not in self._pairs:
            self._pairs[language] = verse_retrieval_pairs("heldout", max_pairs=self.max_pairs, language=language)
        return self._pairs[language]

    def references(self, language: str) -> dict:
        pairs = self.pairs_for(language)
        dropped = len(self.sample) - len(pairs)
        return {"chance": 1.0 / len(pairs), "pairs": len(pairs), "layer": self.layer,
                **({"pairs_missing_in_language": dropped} if dropped else {})}

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> float:

        check_compatible(info, hidden_size=self.cfg.hidden_size, pad_token_id=self.cfg.pad_token_id,
                         body_fingerprint=self.lineage["body_fingerprints"].get(str(info.fingerprint_layers), "none"),
                         where=str(self.pretrained_dir))
        state, cfg = plug_embeddings(self.state, self.cfg, tensors["word"], tensors["output_bias"], info.pad_token_id)
        model = MLMEncoder(cfg)
        model.load_state_dict(state, strict=True)
        pairs = self.pairs_for(info.language)
        target = mean_pooled(model, [p.target for p in pairs], Tokenizer.load(tokenizer_path), self.layer,
                             max_len=self.max_len)
        english = self.english[torch.tensor([self._row[p.id] for p in pairs], dtype=torch.long)]
        return retrieval_metrics(english, target)["top1"]


class ScoreCache:
    """Scores already computed, keyed by the tensors' hash, valid for one scorer identity; kept in
    a JSON file so that re-running a study re-scores nothing (and a shared initial table is scored
    once for all runs)."""

    def __init__(self, path: Path | None, identity: dict):
        self.path, self.identity, self.scores = path, identity, {}
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raw = {}
            if raw.get("identity") == identity:
                self.scores = dict(raw.get("scores", {}))

    def get(self, key: str, compute: Callable[[], float]) -> float:
        if key not in self.scores:
            self.scores[key] = float(compute())
            if self.path is not None:

                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps({"identity": self.identity, "scores": self.scores}, indent=1))
        return self.scores[key]


def collect_points(run: StudyRun, scorer, cache: ScoreCache | None = None, include_init: bool = True,
                   log: Callable[[str], None] = print) -> list[Point]:
    """The run's curve: (its initial embeddings at 0 FLOPs, when asked) + every complete checkpoint."""
    cache = cache or ScoreCache(None, scorer.identity)
    points = []
    sources = ([(INIT_TAG, lambda: init_tensors(run))] if include_init else []) + \
              [(tag, lambda tag=tag: checkpoint_tensors(run, tag)) for tag in run.tags]
    for tag, load in sources:
        tensors = load()
        value = cache.get(tensors_key(run.info, tensors),
                          lambda: scorer.score(run.info, tensors, run.tokenizer_path))
        step, flops, seconds = (0, 0, 0.0) if tag == INIT_TAG else run.point_meta(tag)
        points.append(Point(step, flops, seconds, value, tag))
        log(f"  {run.name:<10} {tag:<14} step {step:>6}  {flops:.3e} FLOPs  {seconds:8.1f} s  "
            f"{scorer.metric} {value:.4f}")
    return points
