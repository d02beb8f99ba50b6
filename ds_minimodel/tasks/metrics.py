"""Task metrics: classification, SQuAD/MLQA extractive QA, and bitext retrieval.

Every metric is a fraction in [0, 1] (the official SQuAD/MLQA scripts print 100x these).

QA answer normalisation follows the official scripts exactly:
- `lang=None`: SQuAD v1.1's `evaluate-v1.1.py`: lowercase, drop ASCII punctuation
  (`string.punctuation`), drop the articles a/an/the, collapse whitespace.
- `lang` one of MLQA's languages: `mlqa_evaluation_v1.py`: lowercase, drop every Unicode
  punctuation character (category P*) and ASCII punctuation, drop that language's articles
  (en: a/an/the; es, de, vi, ar: their lists; hi, zh: none), then whitespace tokens, except zh,
  which splits CJK characters and punctuation into tokens of their own ("mixed segmentation").
- any other language (e.g. "ny"): MLQA's punctuation rule, no article removal, whitespace tokens.
F1 is over the normalised tokens; a question's score is the max over its gold answers.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Mapping, Sequence

import torch

from ds_minimodel.errors import InvalidValueError

# --------------------------------------------------------------------------------------------
# Classification


def _pairs(predictions: Sequence[int], labels: Sequence[int]) -> list[tuple[int, int]]:
    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]
    if len(predictions) != len(labels):
        raise InvalidValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise InvalidValueError("no examples to score")
    return list(zip(predictions, labels))


def paired_difference(correct_a: Sequence[float], correct_b: Sequence[float]) -> tuple[float, float]:
    """Accuracy of A minus accuracy of B on the same examples, and the standard error of that
    difference: the sample standard deviation of the per-example differences (each -1, 0 or 1)
    over sqrt(n). Pairing cancels the examples both get right or both get wrong, so two methods
    scored on one test set are compared far more tightly than two independent accuracies.
    A per-example score may also be a fraction (an example's mean correctness over several
    languages): the same formula over its differences."""
    if len(correct_a) != len(correct_b):
        raise InvalidValueError(f"{len(correct_a)} results against {len(correct_b)}: not the same examples")
    n = len(correct_a)
    if n < 2:
        raise InvalidValueError("a paired difference needs at least 2 examples")
    d = [float(a) - float(b) for a, b in zip(correct_a, correct_b)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return mean, (var / n) ** 0.5


def confusion_counts(a: Sequence[int], b: Sequence[int], num_labels: int) -> torch.Tensor:
    """[num_labels, num_labels] float64 counts: row = a's label, column = b's label."""
    pairs = _pairs(a, b)
    out = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    for x, y in pairs:
        if not (0 <= x < num_labels and 0 <= y < num_labels):
            raise InvalidValueError(f"label pair ({x}, {y}) is outside 0..{num_labels - 1}")
        out[x, y] += 1
    return out


def kappa_from_confusion(confusion) -> float:
    """Cohen's kappa of a square count matrix: (p_o - p_e) / (1 - p_e), p_o the diagonal's share,
    p_e the agreement two raters with these marginals reach by chance. Why kappa and not raw
    agreement: a classifier that answers one class agrees with another that mostly answers it
    too, at a high rate and for no reason; kappa scores that 0. When both raters use one and the
    same class throughout (p_e = 1) agreement is perfect but says nothing: kappa is 0 there too
    (a convention; the formula is 0/0)."""
    c = torch.as_tensor(confusion, dtype=torch.float64)
    n = c.sum()
    if c.dim() != 2 or c.shape[0] != c.shape[1] or n <= 0:
        raise InvalidValueError(f"kappa needs a square, non-empty count matrix, got shape {tuple(c.shape)}")
    p_o = c.diagonal().sum() / n
    p_e = (c.sum(dim=1) * c.sum(dim=0)).sum() / n ** 2
    if p_e >= 1:
        return 0.0
    return float((p_o - p_e) / (1 - p_e))


def cohen_kappa(a: Sequence[int], b: Sequence[int], num_labels: int) -> float:
    return kappa_from_confusion(confusion_counts(a, b, num_labels))


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (1 = positive): the probability
    that a random positive scores above a random negative, ties counting one half (the
    Mann-Whitney U statistic over n_pos * n_neg), from average ranks."""
    s = torch.as_tensor([float(x) for x in scores], dtype=torch.float64)
    y = torch.as_tensor([int(v) for v in labels])
    if s.shape != y.shape or not set(y.tolist()) <= {0, 1}:
        raise InvalidValueError("roc_auc needs one 0/1 label per score")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if not n_pos or not n_neg:
        raise InvalidValueError("roc_auc needs both positive and negative examples")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank (1-based) over each run of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def nearest_row_hits(learned, source, targets, want) -> torch.Tensor:
    """1.0 where the learned row `targets[i]`'s nearest source row by cosine (over the whole source
    table) is `want[i]`, else 0.0: the per-row units of row precision@1, in float64."""
    learned, source = torch.as_tensor(learned).double(), torch.as_tensor(source).double()
    q = torch.nn.functional.normalize(learned[torch.as_tensor(targets)], dim=1)
    k = torch.nn.functional.normalize(source, dim=1)
    return ((q @ k.T).argmax(dim=1) == torch.as_tensor(want)).double()


def row_precision_at_1(learned, source, known: Mapping[int, int]) -> tuple[float, int]:
    """For the target rows whose correct source row is known ({target id: source id}), how often
    the learned row's nearest source row by cosine is that one; returns (precision, rows scored).
    Only meaningful where the answer is known, as for a cipher of the source language."""
    if not known:
        raise InvalidValueError("row precision@1 needs at least one target row with a known source row")
    hits = nearest_row_hits(learned, source, list(known.keys()), list(known.values()))
    return float(hits.mean()), len(known)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_labels: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores.

    Classes: 0..num_labels-1 when given (a class that is neither predicted nor present scores
    0, as scikit-learn's `f1_score(average="macro", labels=range(n))`), otherwise the classes
    that occur in labels or predictions (scikit-learn's default).
    """
    pairs = _pairs(predictions, labels)
    if num_labels is not None:
        bad = [v for pair in pairs for v in pair if not 0 <= v < num_labels]
        if bad:
            raise InvalidValueError(f"label/prediction {bad[0]} is outside 0..{num_labels - 1}")
        classes = range(num_labels)
    else:
        classes = sorted({v for pair in pairs for v in pair})
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in pairs)
        fp = sum(p == c and y != c for p, y in pairs)
        fn = sum(p != c and y == c for p, y in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------------------------
# Extractive QA (SQuAD v1.1 / MLQA)

MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",  # as in mlqa_evaluation_v1.py: in effect removes every "ال"
    "hi": None,
    "zh": None,
}
_SQUAD_PUNCT = frozenset(string.punctuation)
_CJK = re.compile(r"[\u4e00-\u9fa5]")


@lru_cache(maxsize=1)
def _unicode_punct() -> frozenset[str]:
    # Built on first use: scanning all code points takes ~0.3 s.
    unicode_p = (chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))
    return frozenset(unicode_p) | _SQUAD_PUNCT


def _mixed_segmentation(text: str, punct: frozenset[str]) -> list[str]:
    tokens: list[str] = []
    buf = ""
    for ch in text:
        if _CJK.search(ch) or ch in punct:
            tokens.extend(buf.split())
            buf = ""
            tokens.append(ch)
        else:
            buf += ch
    tokens.extend(buf.split())
    return tokens


def normalize_answer(text: str, lang: str | None = None) -> str:
    """The official normalisation of SQuAD v1.1 (`lang=None`) or MLQA (`lang`); see the module doc."""
    text = text.lower()
    if lang is None:
        text = "".join(ch for ch in text if ch not in _SQUAD_PUNCT)
        text = re.sub(r"\b(a|an|the)\b", " ", text)
        return " ".join(text.split())
    punct = _unicode_punct()
    text = "".join(ch for ch in text if ch not in punct)
    articles = MLQA_ARTICLES.get(lang)
    if articles:
        text = re.sub(articles, " ", text)
    tokens = _mixed_segmentation(text, punct) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip())


def exact_match_score(prediction: str, gold: str, lang: str | None = None) -> float:
    return float(normalize_answer(prediction, lang) == normalize_answer(gold, lang))


def f1_score(prediction: str, gold: str, lang: str | None = None) -> float:
    pred = normalize_answer(prediction, lang).split()
    ref = normalize_answer(gold, lang).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]] | Sequence,
               lang: str | None = None) -> dict[str, float]:
    """Exact match and F1 over questions, max over each question's gold answers.

    `references`: {id: [gold answer texts]} or a list of `QAExample`. A question without a
    prediction scores 0 (as in the official scripts) and is counted in "missing"; predictions
    for unknown ids are ignored.
    """
    if not isinstance(references, Mapping):
        references = {ex.id: [a["text"] for a in ex.answers] for ex in references}
    if not references:
        raise InvalidValueError("no reference questions to score")
    em = f1 = 0.0
    missing = 0
    for qid, golds in references.items():
        if qid not in predictions:
            missing += 1
            continue
        pred = predictions[qid]
        em += max(exact_match_score(pred, g, lang) for g in golds)
        f1 += max(f1_score(pred, g, lang) for g in golds)
    n = len(references)
    return {"exact_match": em / n, "f1": f1 / n, "count": n, "missing": missing}


# --------------------------------------------------------------------------------------------
# Bitext retrieval


def _as_matrix(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise InvalidValueError(f"{name} embeddings must be a 2-D matrix (got shape {tuple(t.shape)})")
    return t


def _gold_ranks(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    ranks = []
    for i in range(0, queries.shape[0], chunk):
        sim = queries[i:i + chunk] @ keys.T
        gold = sim[torch.arange(sim.shape[0]), torch.arange(i, i + sim.shape[0])].unsqueeze(1)
        # Rank = number of candidates at least as similar as the gold one (itself included):
        # ties count against the query, so a collapsed encoder (all embeddings equal) scores
        # rank N, not a perfect 1.
        ranks.append((sim >= gold).sum(dim=1))
    return torch.cat(ranks)


def retrieval_ranks(source, target) -> dict[str, torch.Tensor]:
    """The gold's rank for every pair in both directions ({"src2tgt", "tgt2src"}: [N] int64), as
    `retrieval_metrics` ranks them: its per-pair view, for resampling pairs (the compute-budget
    study's bootstrap). Pair i's top-1 hits are ranks == 1."""
    src, tgt = _as_matrix(source, "source"), _as_matrix(target, "target")
    if src.shape != tgt.shape:
        raise InvalidValueError(f"source embeddings {tuple(src.shape)} and target {tuple(tgt.shape)} "
                                "must have the same shape (row i of each is a pair)")
    if src.shape[0] < 2:
        raise InvalidValueError("retrieval needs at least 2 pairs")
    src = torch.nn.functional.normalize(src, dim=1, eps=1e-12)
    tgt = torch.nn.functional.normalize(tgt, dim=1, eps=1e-12)
    return {"src2tgt": _gold_ranks(src, tgt), "tgt2src": _gold_ranks(tgt, src)}


def retrieval_metrics(source, target) -> dict[str, float]:
    """Top-1 accuracy and MRR of bitext retrieval between aligned embedding matrices.

    Row i of `source` (e.g. English verse embeddings) and row i of `target` (its translation) are a
    translation pair; every other row is a distractor. Similarity is cosine (rows L2-normalised,
    float64). Both directions are scored: "src2tgt_*" ranks all target rows for each source
    row, "tgt2src_*" the reverse; "top1" and "mrr" are the means of the two directions. The
    gold's rank counts ties pessimistically (see `_gold_ranks`). Accepts tensors or arrays.
    """
    out: dict[str, float] = {}
    all_ranks = retrieval_ranks(source, target)
    for name, ranks in all_ranks.items():
        ranks = ranks.to(torch.float64)
        out[f"{name}_top1"] = (ranks == 1).double().mean().item()
        out[f"{name}_mrr"] = (1.0 / ranks).mean().item()
    out["top1"] = (out["src2tgt_top1"] + out["tgt2src_top1"]) / 2
    out["mrr"] = (out["src2tgt_mrr"] + out["tgt2src_mrr"]) / 2
    out["count"] = all_ranks["src2tgt"].shape[0]
    return out
