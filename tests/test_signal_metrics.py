"""Kappa, AUC and row precision@1 (tasks/metrics.py) against values worked out by hand."""

import itertools

import pytest
import torch

from ds_minimodel.errors import InvalidValueError
from ds_minimodel.tasks.metrics import cohen_kappa, kappa_from_confusion, roc_auc, row_precision_at_1


def test_kappa_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5.
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(a, b, 2) == pytest.approx(0.4)


def test_kappa_of_a_collapsed_classifier_is_zero():
    # The target classifier answers class 2 always; English answers 2 on 80% of verses. Raw
    # agreement is 0.8, kappa 0: p_o = 0.8, p_e = 1.0 * 0.8.
    english = [2] * 80 + [0] * 10 + [1] * 10
    target = [2] * 100
    assert kappa_from_confusion(torch.tensor([[0, 0, 10], [0, 0, 10], [0, 0, 80]]).T) == pytest.approx(0.0)
    assert cohen_kappa(target, english, 3) == pytest.approx(0.0)
    assert cohen_kappa(english, english, 3) == pytest.approx(1.0)
    assert cohen_kappa([0] * 5, [0] * 5, 3) == 0.0  # one class throughout: no information


def test_auc_equals_pairwise_count():
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.2, 0.9]
    labels = [0, 1, 0, 1, 0, 1, 1]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    want = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(want)
    with pytest.raises(InvalidValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_row_precision_at_1():
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # target row 0 is near source 1 (correct), row 1 near source 2 (its known answer is 0: wrong),
    # row 2 is scaled source 2 (cosine ignores the scale: correct), row 3 has no known answer.
    learned = torch.tensor([[0.1, 2.0], [0.9, 1.0], [3.0, 3.0], [5.0, 0.0]])
    p, n = row_precision_at_1(learned, source, {0: 1, 1: 0, 2: 2})
    assert (p, n) == (pytest.approx(2 / 3), 3)
