"""Scoring a pack-equivalent with the transfer metric (accuracy, or verse retrieval), per unit
(test example, verse pair) so that the study can resample them, and the content-keyed cache
that makes a study resumable.

Every scorer's `score` returns `Units`: a numerator and a denominator per unit, the metric over a
set of units being sum(num) / sum(den) (bootstrap.py). A scorer says which way is better, and
`clusters(language)` says which units are correlated (bootstrap.UnitClusters, in unit order: the
chapter of each test verse or verse pair), or None where it cannot tell."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ds_minimodel.artefacts.langpack import PackInfo, check_compatible
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import plugged_encoder
from ds_minimodel.config import FinetuneConfig, from_dict
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.finetune.classification import load_task, predictions
from ds_minimodel.steps.finetune.common import load_classifier
from ds_minimodel.steps.transfer import mean_pooled, plugged_model
from ds_minimodel.study.bootstrap import UnitClusters
from ds_minimodel.study.runs import (
    INIT_TAG,
    StudyRun,
    checkpoint_tensors,
    init_tensors,
)
from ds_minimodel.tasks.batching import encode_texts
from ds_minimodel.tasks.bible import (
    majority_rate,
    retrieval_sample,
    verse_retrieval_pairs,
)
from ds_minimodel.tasks.metrics import retrieval_ranks
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.layout import layout_for
from ds_minimodel.training.checkpoint import write_atomic

CACHE_FORMAT = 2  # per-unit scores (format 1 kept one number per checkpoint)


@dataclass
class Units:
    """One checkpoint's score per unit: the metric over units U is sum(num[U]) / sum(den[U]), or,
    with a `statistic`, statistic(sum(num[U]), sum(den[U])) where num holds C components per unit
    ([N, C]: kappa's counts, `kappa_statistic`)."""
    num: np.ndarray
    den: np.ndarray
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def __post_init__(self):
        self.num = np.asarray(self.num, dtype=np.float64)
        self.den = np.ones(len(self.num)) if self.den is None else np.asarray(self.den, dtype=np.float64)
        assert self.num.ndim == (1 if self.statistic is None else 2) and self.den.shape == self.num.shape[:1]

    @property
    def value(self) -> float:
        sums = self.num.sum(axis=0), self.den.sum()
        return float(sums[0] / sums[1] if self.statistic is None else self.statistic(*sums))


def kappa_units(answers: np.ndarray, english: np.ndarray, classes: int) -> np.ndarray:
    """Per unit, the 2K + 1 counts Cohen's kappa is a function of (summed over any set of units):
    [agree, one-hot of the target answer (K), one-hot of the English answer (K)]."""
    eye = np.eye(classes)
    return np.concatenate([(answers == english)[:, None].astype(float), eye[answers], eye[english]], axis=1)


def kappa_statistic(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Cohen's kappa from `kappa_units`' sums [..., 2K + 1] over n units [...]: (p_o - p_e) / (1 -
    p_e), p_o the agreeing share, p_e the agreement of two raters with these answer shares by
    chance; 0 where p_e = 1 (both answer one and the same class throughout: tasks/metrics.py)."""
    k = (sums.shape[-1] - 1) // 2
    p_o = sums[..., 0] / n
    p_e = (sums[..., 1:k + 1] * sums[..., k + 1:]).sum(axis=-1) / n ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1, (p_o - p_e) / np.where(p_e < 1, 1 - p_e, 1.0), 0.0)


def verse_chapter(verse_id: str) -> str | None:
    """"book.chapter" of a "book.chapter.verse" id (tasks/bible.verse_id); None for any other id
    (XNLI's "en-123", PAWS-X's "17": examples that are not Bible verses)."""
    parts = str(verse_id).split(".")
    return f"{parts[0]}.{parts[1]}" if len(parts) == 3 and all(p.isdigit() for p in parts) else None


def chapter_clusters(ids) -> UnitClusters | None:
    """The chapters of verse ids, in order; None unless every id is a verse's (the bootstrap then
    draws units one by one, and says so)."""
    chapters = [verse_chapter(i) for i in ids]
    return UnitClusters("chapter", tuple(chapters)) if chapters and None not in chapters else None


def tensors_key(info: PackInfo, tensors: dict) -> str:
    h = hashlib.sha256(f"{info.language}:{info.tokenizer_fingerprint}:{info.body_fingerprint}".encode())
    for name in ("word", "output_bias"):
        t = tensors[name].detach().float().contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_id(path: Path) -> str:
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
    the order). Its units are the test examples (1 if right, 0 if wrong), in test-set order.
    """
    metric = "accuracy"
    better = "higher"

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
        src_tok = load_tokenizer(self.lineage["tokenizer"])
        # Packed as the model family expects (BERT: [CLS] A [SEP] B [SEP] with segment ids).
        self.layout = layout_for(self.model.encoder.cfg)
        src = encode_texts(src_test, src_tok, self.max_len, self.layout)
        # Per example: two models' English results pair on the same examples (full_models.py), and
        # the English answers are what a target verse's answer is held against (agreement).
        self.source_predictions = np.asarray(predictions(self.model, src.ids, src_tok.pad_id, batch_size,
                                                         type_ids=src.type_ids), dtype=np.int64)
        self.source_correct = self.source_predictions == np.array([ex.label for ex in src_test], dtype=np.int64)
        self.source_ids = [ex.id for ex in src_test]
        self._source_answer = dict(zip(self.source_ids, self.source_predictions.tolist()))
        self._answers: dict[str, np.ndarray] = {}  # by tensors_key: accuracy and agreement share a forward pass
        self.source_accuracy = float(self.source_correct.mean()) if len(src_test) else 0.0
        self._encoded: dict[tuple[str, str], tuple[list, list | None, list, int]] = {}
        self.identity = {"metric": self.metric, "model": file_id(self.model_dir / "model.pt"), "task": self.task.name,
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

    def balanced_weights(self, language: str) -> np.ndarray:
        """Per test example (test-set order, the subset scored), 1 / the size of its class: the
        accuracy units reweighted by these give the class-balanced accuracy (the mean recall over
        classes; compare.py's `balanced_accuracy`), on which a classifier that answers one class
        whatever the input scores 1 / classes, whichever class it collapsed to."""
        labels = np.array([ex.label for ex in self._subset(self.task.test_in(language))])
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        return 1.0 / counts[inverse]

    def clusters(self, language: str) -> UnitClusters | None:
        """Per test example (test-set order, the subset scored), the chapter of its verse."""
        return chapter_clusters([ex.id for ex in self._subset(self.task.test_in(language))])

    def encoded(self, info: PackInfo, tokenizer_path: str):
        """The test examples of the pack's language under its tokenizer, sorted by length:
        (ids, type ids, pad id, order), made once per language and tokenizer and cached."""
        key = (info.language, info.tokenizer_fingerprint)
        if key not in self._encoded:
            tok = load_tokenizer(tokenizer_path)
            test = self._subset(self.task.test_in(info.language))  # the pack's language picks the test set
            enc = encode_texts(test, tok, self.max_len, self.layout)
            order = sorted(range(len(enc.ids)), key=lambda i: (len(enc.ids[i]), i))
            types = [enc.type_ids[i] for i in order] if enc.type_ids is not None else None
            self._encoded[key] = ([enc.ids[i] for i in order], types, tok.pad_id, np.array(order))
        return self._encoded[key]

    def per_example(self, info: PackInfo, tensors: dict, tokenizer_path: str, outputs=predictions) -> np.ndarray:
        """`outputs(model, ids, pad_id, batch_size, type_ids=)` (classification.predictions or
        probabilities) of the classifier with the pack plugged in, one row per test example in
        test-set order (the subset scored), computed in batches of similar length."""
        encoded, types, pad_id, order = self.encoded(info, tokenizer_path)
        plugged = plugged_model(self.model, info, tensors, self.lineage, str(self.model_dir))
        values = np.asarray(outputs(plugged, encoded, pad_id, self.batch_size, type_ids=types))
        out = np.empty_like(values)
        out[order] = values
        return out

    def answers(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> np.ndarray:
        """The classifier's answer on each test example (test-set order, the subset scored) with
        the pack plugged in."""
        key = tensors_key(info, tensors)
        if key not in self._answers:
            # a few ints per example: accuracy and agreement reuse them
            self._answers[key] = self.per_example(info, tensors, tokenizer_path).astype(np.int64)
        return self._answers[key]

    def labels(self, language: str) -> np.ndarray:
        return np.array([ex.label for ex in self._subset(self.task.test_in(language))], dtype=np.int64)

    def source_answers(self, language: str) -> np.ndarray:
        """Per test example of `language` (test-set order, the subset scored), the classifier's
        answer on the parallel English verse (the same verse id)."""
        test = self._subset(self.task.test_in(language))
        missing = [ex.id for ex in test if ex.id not in self._source_answer]
        if missing:
            raise UserError(f"agreement needs each {language} test verse's English verse; {len(missing)} have none "
                            f"(first: {missing[0]})")
        return np.array([self._source_answer[ex.id] for ex in test], dtype=np.int64)

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> Units:
        return Units((self.answers(info, tensors, tokenizer_path) == self.labels(info.language)).astype(float), None)



class RetrievalScorer:
    """English<->target verse retrieval top-1 (mean of both directions) on held-out verses:
    English through the pretrained model with its own tokenizer (pooled once), the target
    language through the same body with each pack plugged in (as transfer.evaluate_retrieval).
    The pack's language picks the target verses: the same held-out English verses for every
    language, less those its Bible lacks. Its units are the verse pairs: 1 when the pair is each
    other's top-1 both ways, 0.5 one way, 0 neither (their mean is top-1, the mean of both
    directions). Resampling pairs keeps each pair's hits as scored against all the pairs."""
    metric = "retrieval_top1"
    better = "higher"

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
        self.english = mean_pooled(model, [text for _, text in self.sample], load_tokenizer(self.lineage["tokenizer"]),
                                   self.layer, max_len=self.max_len)
        self.identity = {"metric": self.metric, "model": file_id(self.pretrained_dir / "model.pt"),
                         "pairs": len(self.sample), "layer": self.layer}

    def pairs_for(self, language: str):
        """The held-out verse pairs of `language` (VersePairs: its meta says what was dropped)."""

        if language not in self._pairs:
            self._pairs[language] = verse_retrieval_pairs("heldout", max_pairs=self.max_pairs, language=language)
        return self._pairs[language]

    def clusters(self, language: str) -> UnitClusters | None:
        """Per verse pair (the units' order), its chapter."""
        return chapter_clusters([p.id for p in self.pairs_for(language)])

    def references(self, language: str) -> dict:
        pairs = self.pairs_for(language)
        dropped = len(self.sample) - len(pairs)
        return {"chance": 1.0 / len(pairs), "pairs": len(pairs), "layer": self.layer,
                **({"pairs_missing_in_language": dropped} if dropped else {})}

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> float:

        check_compatible(info, hidden_size=self.cfg.hidden_size, pad_token_id=self.cfg.pad_token_id,
                         body_fingerprint=self.lineage["body_fingerprints"].get(str(info.mini_depth), "none"),
                         where=str(self.pretrained_dir))
        model = plugged_encoder(self.state, self.cfg, tensors, info.pad_token_id)
        pairs = self.pairs_for(info.language)
        target = mean_pooled(model, [p.target for p in pairs], load_tokenizer(tokenizer_path), self.layer,
                             max_len=self.max_len)
        english = self.english[torch.tensor([self._row[p.id] for p in pairs], dtype=torch.long)]
        ranks = retrieval_ranks(english, target)
        hits = ((ranks["src2tgt"] == 1).double() + (ranks["tgt2src"] == 1).double()) / 2
        return Units(hits.numpy(), None)


class AgreementScorer:
    """Agreement with English: per test verse, the classifier's answer on the target verse (the
    pack plugged in) against its answer on the parallel English verse. `kappa` (metric
    "agreement", the study's headline for cipher languages): Cohen's kappa, which scores a
    classifier that answers one class whatever the input 0, however often that class is also the
    English answer; otherwise (metric "raw_agreement") the share of verses answered alike, reported
    beside it. The English model's own errors leave both measures (a perfect transfer agrees
    wherever English is wrong too). Built over an AccuracyScorer, or a ByBody of them; accuracy
    and both agreements of one table share its forward pass."""
    better = "higher"

    def __init__(self, accuracy, kappa: bool = True):
        self.accuracy, self.kappa = accuracy, kappa
        self.metric = "agreement" if kappa else "raw_agreement"
        self.statistic = kappa_statistic if kappa else None
        self.identity = {**accuracy.identity, "metric": self.metric}
        first = accuracy.scorers[0] if isinstance(accuracy, ByBody) else accuracy
        self.lineage, self.model_dir, self._first = first.lineage, first.model_dir, first
        self.classes = int(first.task.num_labels)

    def _scorer_for(self, info: PackInfo):
        return self.accuracy.scorer_for(info) if isinstance(self.accuracy, ByBody) else self.accuracy

    def clusters(self, language: str) -> UnitClusters | None:
        return self.accuracy.clusters(language)

    def references(self, language: str) -> dict:
        english = self._first.source_answers(language)
        shares = np.bincount(english, minlength=self.classes) / max(len(english), 1)
        refs = {"source_accuracy": self._first.source_accuracy, "test_examples": int(len(english))}
        # A classifier answering one class whatever the input: kappa 0; raw agreement that class's share.
        return {**refs, "one_class": 0.0} if self.kappa else {**refs, "one_class_best": float(shares.max())}

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> Units:
        scorer = self._scorer_for(info)
        answers, english = scorer.answers(info, tensors, tokenizer_path), scorer.source_answers(info.language)
        if self.kappa:
            return Units(kappa_units(answers, english, self.classes), None, kappa_statistic)
        return Units((answers == english).astype(float), None)


class ByBody:
    """One metric over several models: each pack is scored by the scorer whose model it was trained
    for (the model's lineage has the pack's body fingerprint at the pack's depth). So methods
    adapted from different models, the paper's comparison (the standard baseline and MiniPost from
    a regular model, MiniJoint from its own), are each measured through their own model. The
    first scorer's model is the baseline's: its references are the study's."""

    def __init__(self, scorers: list):
        if not scorers:
            raise UserError("no model to score with")
        self.scorers = scorers
        self.metric, self.better = scorers[0].metric, scorers[0].better
        if any(s.metric != self.metric for s in scorers):
            raise UserError(f"one study metric, several scorers: {sorted({s.metric for s in scorers})}")
        self.identity = {"metric": self.metric, "models": [s.identity for s in scorers]}

    @staticmethod
    def fits(scorer, info: PackInfo) -> bool:
        return scorer.lineage.get("body_fingerprints", {}).get(str(info.mini_depth)) == info.body_fingerprint

    def scorer_for(self, info: PackInfo):
        for s in self.scorers:
            if self.fits(s, info):
                return s
        models = ", ".join(str(getattr(s, "model_dir", getattr(s, "pretrained_dir", "?"))) for s in self.scorers)
        raise UserError(f"no scoring model fits the {info.method} pack ({info.language}, body fingerprint "
                        f"{info.body_fingerprint} over {info.mini_depth} layers): it was adapted from "
                        f"another model than {models}")

    def balanced_weights(self, language: str) -> np.ndarray:
        return self.scorers[0].balanced_weights(language)  # every model scores the same test set

    def clusters(self, language: str) -> UnitClusters | None:
        return self.scorers[0].clusters(language)  # the same units for every model

    def references(self, language: str) -> dict:
        refs = self.scorers[0].references(language)
        if len(self.scorers) > 1:
            refs = {**refs, "other_models": [s.references(language) for s in self.scorers[1:]]}
        return refs

    def score(self, info: PackInfo, tensors: dict, tokenizer_path: str) -> Units:
        return self.scorer_for(info).score(info, tensors, tokenizer_path)


class ScoreCache:
    """Scores already computed, per unit, keyed by the tensors' hash, valid for one scorer
    identity; kept in a JSON file so that re-running a study re-scores nothing (and a table
    shared by several runs, such as their common initial embeddings, is scored once)."""

    def __init__(self, path: Path | None, identity: dict):
        self.path, self.identity, self.scores = path, identity, {}
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raw = {}
            if raw.get("identity") == identity and raw.get("format") == CACHE_FORMAT:
                self.scores = dict(raw.get("scores", {}))

    @staticmethod
    def _stored(units: Units) -> dict:
        # 0/1 (and 0.5) scores and counts as short numbers; a denominator only where it is not all ones.
        integral = np.array_equal(units.num, np.round(units.num))
        num = units.num.astype(np.int64).tolist() if integral else units.num.tolist()
        return {"num": num} if np.all(units.den == 1) else {"num": num, "den": units.den.tolist()}

    def get(self, key: str, compute: Callable[[], Units], statistic: Callable | None = None) -> Units:
        if key not in self.scores:
            self.scores[key] = self._stored(compute())
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps({"identity": self.identity, "format": CACHE_FORMAT,
                                                    "scores": self.scores}))
        entry = self.scores[key]
        return Units(np.array(entry["num"], dtype=np.float64), entry.get("den"), statistic)


@dataclass
class RunScores:
    """A run's curve on one metric: per point (its initial embeddings, then each checkpoint) its
    step, FLOPs, wall-clock and per-unit scores."""
    name: str
    seed: int
    tags: list[str]
    steps: list[int]
    flops: list[int]
    seconds: list[float]
    units: list[Units]

    @property
    def values(self) -> list[float]:
        return [u.value for u in self.units]


def collect_scores(run: StudyRun, scorer, cache: ScoreCache | None = None, include_init: bool = True,
                   log: Callable[[str], None] = print) -> RunScores:
    """The run's curve: (its initial embeddings at 0 FLOPs, when asked) + every complete checkpoint."""
    cache = cache or ScoreCache(None, scorer.identity)
    out = RunScores(run.name, run.seed, [], [], [], [], [])
    sources = ([(INIT_TAG, lambda: init_tensors(run))] if include_init else []) + \
              [(tag, lambda tag=tag: checkpoint_tensors(run, tag)) for tag in run.tags]
    for tag, load in sources:
        tensors = load()
        units = cache.get(tensors_key(run.info, tensors), lambda: scorer.score(run.info, tensors, run.tokenizer_path),
                          getattr(scorer, "statistic", None))
        step, flops, seconds = (0, 0, 0.0) if tag == INIT_TAG else run.point_meta(tag)
        for field, v in (("tags", tag), ("steps", step), ("flops", flops), ("seconds", seconds), ("units", units)):
            getattr(out, field).append(v)
        log(f"  {run.name + ' s' + str(run.seed):<14} {tag:<14} step {step:>6}  {flops:.3e} FLOPs  {seconds:8.1f} s  "
            f"{scorer.metric} {units.value:.4f}")
    return out
