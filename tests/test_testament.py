"""The Old-vs-New-Testament task (tasks/bible.verse_testament_task) and bench/metric_signal.py,
which compares its signal per CPU minute with the genre task's: the task's splits, the AUC the
bench computes through a hand-made tiny classifier against a brute-force pairwise AUC, and the
chapter bootstrap's standard error against a loop written here."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys

import numpy as np
import pytest
import torch

from ds_minimodel.data.bible_table import heldout_chapters
from ds_minimodel.tasks import bible
from ds_minimodel.tasks.metrics import cohen_kappa, roc_auc
from tests.conftest import REPO


def _key(verse_id: str) -> tuple[int, int, int]:
    return tuple(int(p) for p in verse_id.split("."))


@pytest.fixture(scope="module")
def testament():
    return bible.verse_testament_task(seed=0)


@pytest.fixture(scope="module")
def signal():
    spec = importlib.util.spec_from_file_location("metric_signal", REPO / "bench" / "metric_signal.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["metric_signal"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("metric_signal", None)


# ---- the task ---------------------------------------------------------------------------------

def test_testament_task_splits(testament):
    from ds_minimodel.data.bibles import english_verses

    assert testament.name == "verse-testament" and testament.label_names == ("old", "new")
    assert testament.num_labels == 2 and testament.language == "ny" and testament.train_language == "en"
    heldout = heldout_chapters()
    train = [_key(ex.id) for ex in testament.train]
    valid = [_key(ex.id) for ex in testament.validation]
    test = [_key(ex.id) for ex in testament.tests["en"]]
    # Balanced training classes, at the cap; validation balanced too.
    assert [sum(ex.label == c for ex in testament.train) for c in (0, 1)] == [bible.MAX_TESTAMENT_TRAIN_PER_CLASS] * 2
    assert [sum(ex.label == c for ex in testament.validation) for c in (0, 1)] == \
        [bible.MAX_TESTAMENT_VALIDATION_PER_CLASS] * 2
    # Labels by book: Genesis..Malachi 0, Matthew..Revelation 1.
    assert all(ex.label == (_key(ex.id)[0] >= 40) for split in (testament.train, testament.validation,
                                                               testament.tests["en"]) for ex in split)
    by_book = {_key(ex.id)[0]: ex.label for ex in testament.train}
    assert (by_book[1], by_book[39], by_book[40], by_book[66]) == (0, 0, 1, 1)
    # Test: every held-out verse but the verbatim repeats of text outside the held-out chapters,
    # the genre task's verses exactly; none in train or validation, not even their chapters.
    en = english_verses("kjv")
    outside = {en[k] for k in en if k[:2] not in heldout}
    assert test == sorted(k for k in en if k[:2] in heldout and en[k] not in outside)
    assert [ex.id for ex in testament.tests["en"]] == [ex.id for ex in bible.genre_test_set("en")[0]]
    assert not set(test) & (set(train) | set(valid))
    assert not {k[:2] for k in train + valid} & heldout and not {k[:2] for k in train} & {k[:2] for k in valid}
    counts = testament.meta["class_counts"]["test"]
    assert counts == {"old": sum(k[0] < 40 for k in test), "new": sum(k[0] >= 40 for k in test)}
    assert counts["old"] > 0 and counts["new"] > 0 and len(test) == testament.meta["sizes"]["test"]
    # The target-language test set pairs verse by verse.
    assert [ex.id for ex in testament.tests["ny"]] == [ex.id for ex in testament.tests["en"]]
    assert [ex.label for ex in testament.tests["ny"]] == [ex.label for ex in testament.tests["en"]]
    # The seed moves the training sample, never the test set.
    other = bible.verse_testament_task(seed=1, max_train_per_class=30, max_validation_per_class=5)
    assert [ex.id for ex in other.tests["en"]] == [ex.id for ex in testament.tests["en"]]
    assert len(other.train) == 60 and len(other.validation) == 10


def test_testament_is_a_finetuning_task(monkeypatch):
    from ds_minimodel.config import FinetuneConfig, load_config
    from ds_minimodel.steps.finetune.classification import load_task

    cfg = load_config(FinetuneConfig, REPO / "configs/finetune-testament.yaml",
                      ["finetune.model_dir=x", "train.seed=3"])  # a Bible task: no task_path
    assert cfg.finetune.task == "bible-testament" and not cfg.problems()
    monkeypatch.setattr(bible, "verse_testament_task", lambda seed: ("the testament task", seed))
    assert load_task(cfg) == ("the testament task", 3)


# ---- the bootstrap, against a loop written here -----------------------------------------------

def test_chapter_bootstrap_standard_error_matches_a_written_out_resampling(signal):
    rng = np.random.default_rng(3)
    n = 40
    chapters = [f"{1 + i % 5}.{i % 3}" for i in range(n)]  # 15 chapters, their units interleaved
    # Positives in two chapters only: about 1 replicate in 8 draws neither, and has no AUC.
    labels = np.array([int(c in ("1.0", "2.1")) for c in chapters])
    scores = [np.round(rng.random(n), 1), np.round(rng.random(n) + 0.3 * labels, 1)]  # rounded: ties
    answers = [rng.integers(0, 3, n), np.where(rng.random(n) < 0.6, labels, rng.integers(0, 3, n))]
    english = np.where(rng.random(n) < 0.7, labels, 2)
    replicates, seed = 300, 11

    # Written out: draw the chapters (in first-appearance order), gather their units, score.
    order = []
    for c in chapters:
        if c not in order:
            order.append(c)
    draws = np.random.default_rng(seed).integers(0, len(order), size=(replicates, len(order)))
    gains = {"auc": [], "kappa": [], "accuracy": []}
    for r in range(replicates):
        idx = [i for c in draws[r] for i in range(n) if chapters[i] == order[c]]
        y = labels[idx]
        if 0 < y.sum() < len(y):
            gains["auc"].append(roc_auc(scores[1][idx], y) - roc_auc(scores[0][idx], y))
        gains["kappa"].append(cohen_kappa(answers[1][idx], english[idx], 3)
                              - cohen_kappa(answers[0][idx], english[idx], 3))
        gains["accuracy"].append(np.mean(answers[1][idx] == y) - np.mean(answers[0][idx] == y))

    weights = signal.replicate_weights(chapters, signal.chapter_draws(len(order), replicates, seed))
    assert weights.shape == (replicates, n)
    got = {
        "auc": signal.gain_signal([roc_auc(scores[0], labels)], [roc_auc(scores[1], labels)],
                                  [signal.weighted_auc(scores[0], labels, weights)],
                                  [signal.weighted_auc(scores[1], labels, weights)]),
        "kappa": signal.gain_signal([cohen_kappa(answers[0], english, 3)], [cohen_kappa(answers[1], english, 3)],
                                    [signal.weighted_kappa(answers[0], english, 3, weights)],
                                    [signal.weighted_kappa(answers[1], english, 3, weights)]),
        "accuracy": signal.gain_signal([np.mean(answers[0] == labels)], [np.mean(answers[1] == labels)],
                                       [signal.weighted_mean(answers[0] == labels, weights)],
                                       [signal.weighted_mean(answers[1] == labels, weights)]),
    }
    assert 0 < len(gains["auc"]) < replicates  # some replicates drew no positive: left out
    for name, reference in gains.items():
        assert got[name]["replicates_used"] == len(reference)
        assert got[name]["se"] == pytest.approx(statistics.stdev(reference), rel=1e-9, abs=1e-12), name
        assert got[name]["z"] == pytest.approx(got[name]["gain"] / got[name]["se"])
    assert got["auc"]["gain"] == pytest.approx(roc_auc(scores[1], labels) - roc_auc(scores[0], labels))
    # Two pairs: the gain and every replicate's are the pairs' mean.
    two = signal.gain_signal([0.5, 0.6], [0.7, 0.9], np.array([[0.5, 0.4, 0.6], [0.6, 0.6, 0.6]]),
                             np.array([[0.7, 0.8, 0.6], [0.9, 1.0, 0.8]]))
    assert two["gain"] == pytest.approx(0.25) and two["se"] == pytest.approx(statistics.stdev([0.25, 0.4, 0.1]))


# ---- the bench through a tiny classifier ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_testament(tmp_path_factory, testament):
    """A hand-made testament classifier (a random tiny encoder and head, written as fine-tuning
    writes one) and two English packs for it: a random table (before) and its own (after)."""
    from ds_minimodel.artefacts.langpack import PackInfo, save_pack
    from ds_minimodel.artefacts.modeldir import body_fingerprints, write_model_dir
    from ds_minimodel.config import FinetuneConfig, ModelConfig, load_config, to_dict
    from ds_minimodel.data.bibles import english_verses
    from ds_minimodel.model import MLMEncoder, SequenceClassifier
    from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

    root = tmp_path_factory.mktemp("testament")
    kjv = english_verses("kjv")
    lines = [kjv[k] for k in sorted(kjv)[::20]]
    (root / "en.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(root / "en.txt")], str(root / "en"), 300)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                      max_positions=40, mini_depth=1, hidden_dropout=0.0, attention_dropout=0.0, init_std=0.2)
    torch.manual_seed(0)
    clf = SequenceClassifier(cfg, 2, 0.0, "mean").eval()
    clf.encoder.load_state_dict(MLMEncoder(cfg).state_dict())
    ft = load_config(FinetuneConfig, REPO / "configs/finetune-testament.yaml",
                     ["finetune.max_len=32", f"finetune.model_dir={root}"])
    task_record = {"kind": "classification", "name": "verse-testament", "label_names": ["old", "new"],
                   "max_len": 32, "head_dropout": 0.0, "pooling": "mean"}
    encoder_state = clf.encoder.state_dict()
    final = write_model_dir(root / "ft" / "final", clf.state_dict(),
                            {"model": to_dict(cfg), "finetune": to_dict(ft), "task": task_record},
                            {"kind": "finetune", "task_kind": "classification", "source": str(root),
                             "body_fingerprints": body_fingerprints(encoder_state, cfg)}, tok.path)
    (root / "ft" / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 4, "time": 0.0, "train_seconds": 12.5, "flops": 99}) + "\n")
    info = PackInfo(language="en", method="full", vocab_size=tok.vocab_size, hidden_size=32, pad_token_id=tok.pad_id,
                    special=tok.special_role_ids(), body_fingerprint=body_fingerprints(encoder_state, cfg)["2"],
                    mini_depth=2, tokenizer_fingerprint=tok.fingerprint())
    word = encoder_state["embeddings.word"]
    random = torch.randn(word.shape, generator=torch.Generator().manual_seed(1)) * float(word.std())
    before = save_pack(root / "before", info, random, torch.zeros(tok.vocab_size), tok.path)
    after = save_pack(root / "after", info, word, encoder_state["lm_head.bias"], tok.path)
    return {"model": final, "before": before, "after": after, "tokenizer": tok, "max_len": 32}


def _one_at_a_time(model_dir, pack, examples, max_len) -> np.ndarray:
    """P(class) of each example alone (unpadded) through the classifier with the pack plugged in."""
    from ds_minimodel.artefacts.langpack import load_pack
    from ds_minimodel.steps.finetune.common import load_classifier
    from ds_minimodel.steps.transfer import plugged_model
    from ds_minimodel.tasks.batching import encode_texts
    from ds_minimodel.tokenizers.layout import layout_for

    model, _, lineage = load_classifier(model_dir)
    info, tensors, tok = load_pack(pack)
    plugged = plugged_model(model, info, tensors, lineage, str(model_dir))
    out = []
    with torch.no_grad():
        for ex in examples:
            ids = encode_texts([ex], tok, max_len, layout_for(model.encoder.cfg)).ids[0]
            logits = plugged(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            out.append(torch.softmax(logits["logits"][0].double(), -1).numpy())
    return np.array(out)


def _pairwise_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.fixture()
def built_once(monkeypatch, testament):
    """Scorers load the classifier's task (seed 0, the default caps): the module's, built once."""
    from ds_minimodel.study import scoring

    def load_task(cfg):
        assert cfg.finetune.task == "bible-testament" and cfg.train.seed == 0
        return testament

    monkeypatch.setattr(scoring, "load_task", load_task)


def test_bench_scores_auc_and_kappa_of_each_table(signal, tiny_testament, built_once, tmp_path, capsys):
    from ds_minimodel.steps.finetune.classification import predictions, probabilities
    from ds_minimodel.study.scoring import AccuracyScorer

    examples = 160
    out = tmp_path / "signal.json"
    signal.main(["--testament", str(tiny_testament["model"]), "--before", str(tiny_testament["before"]),
                 "--after", str(tiny_testament["after"]), "--eval-examples", str(examples), "--replicates", "50",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    task = result["tasks"]["testament"]
    assert task["task"] == "verse-testament" and task["test_examples"] == examples and result["language"] == "en"
    assert task["finetune"] == {"train_seconds": 12.5, "flops": 99, "step": 4}
    assert task["scoring_cpu_seconds"] > 0 and task["tables_scored"] == 2

    # The same verses, scored one at a time here.
    scorer = AccuracyScorer(tiny_testament["model"], eval_examples=examples)
    test = scorer._subset(scorer.task.test_in("en"))
    labels = np.array([ex.label for ex in test])
    assert task["class_counts"] == np.bincount(labels, minlength=2).tolist() and 0 < labels.sum() < examples
    auc, kappa = task["metrics"]["auc"], task["metrics"]["agreement"]
    english = scorer.source_answers("en")
    for i, which in enumerate(("before", "after")):
        probs = _one_at_a_time(tiny_testament["model"], tiny_testament[which], test, tiny_testament["max_len"])
        table = signal.tables_from_packs([tiny_testament[which]], [tiny_testament[which]])[0][0]
        bench_probs = scorer.per_example(table.info, table.tensors, table.tokenizer_path, probabilities)
        np.testing.assert_allclose(bench_probs, probs, atol=1e-5)
        assert auc[which][0] == pytest.approx(_pairwise_auc(bench_probs[:, 1], labels), abs=1e-12)
        assert auc[which][0] == pytest.approx(_pairwise_auc(probs[:, 1], labels), abs=0.01)
        assert kappa[which][0] == pytest.approx(cohen_kappa(bench_probs.argmax(1), english, 2), abs=1e-12)
    assert auc["gain"] == pytest.approx(auc["after"][0] - auc["before"][0])
    assert auc["se"] > 0 and auc["replicates_used"] == 50 and auc["z"] == pytest.approx(auc["gain"] / auc["se"])
    # The classifier's own table reproduces its English answers: kappa 1.
    assert kappa["after"][0] == pytest.approx(1.0)
    # probabilities(): softmax rows, in predictions()' order and argmax.
    encoded, types, pad_id, _ = scorer.encoded(signal.tables_from_packs([tiny_testament["after"]],
                                                                        [tiny_testament["after"]])[0][0].info,
                                               str(tiny_testament["after"] / "tokenizer.model"))
    p = np.array(probabilities(scorer.model, encoded, pad_id, 7, type_ids=types))
    assert p.shape == (examples, 2) and np.allclose(p.sum(1), 1.0)
    assert p.argmax(1).tolist() == predictions(scorer.model, encoded, pad_id, 7, type_ids=types)
    assert "testament auc" in printed and "z^2/CPU min" in printed


def test_bench_refuses_a_classifier_of_another_task_and_unpaired_packs(signal, tiny_testament, built_once, tmp_path,
                                                                       capsys):
    for args, needle in (
        (["--genre", str(tiny_testament["model"]), "--before", str(tiny_testament["before"]),
          "--after", str(tiny_testament["after"])], "is a verse-testament classifier, not verse-genre"),
        (["--testament", str(tiny_testament["model"]), "--before", str(tiny_testament["before"])],
         "--before gives 1 pack(s), --after 0"),
    ):
        with pytest.raises(SystemExit) as e:
            signal.main([*args, "--out", str(tmp_path / "x.json")])
        assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
