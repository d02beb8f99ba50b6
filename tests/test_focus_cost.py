"""FOCUS's one-time cost (method/focus_cost.py; issue 23 item 8): the FLOPs of one CBOW update
against a pure-Python step whose arithmetic counts itself, the n-grams against hand lists and
fastText's own, the corpus estimate against hand-worked corpora and a brute-force walk of
fastText's training loop, and the record an adaptation's pack gets."""

import math

import numpy as np
import pytest
import torch

from ds_minimodel.method.focus_cost import cbow_cost, cbow_update_flops, combine_flops, ngram_count


class Counted:
    """A float that counts every multiply and add done with it (the class-wide counter)."""
    ops = 0

    def __init__(self, v: float):
        self.v = float(v)

    @staticmethod
    def _v(x):
        return x.v if isinstance(x, Counted) else float(x)

    def __add__(self, other):
        Counted.ops += 1
        return Counted(self.v + self._v(other))

    __radd__ = __add__

    def __mul__(self, other):
        Counted.ops += 1
        return Counted(self.v * self._v(other))

    __rmul__ = __mul__


def _cbow_step(wi, wo, bag, target, negatives, lr):
    """One CBOW update written from fastText's Model::update and BinaryLogisticLoss, element by
    element; scalar work (sigmoid, alpha) on plain floats, as the count leaves it out."""
    d = len(wi[0])
    hidden = [Counted(0.0) for _ in range(d)]
    for row in bag:  # computeHidden: the sum of the bag's rows, then the mean
        for j in range(d):
            hidden[j] = hidden[j] + wi[row][j]
    scale = 1.0 / len(bag)
    hidden = [h * scale for h in hidden]
    grad = [Counted(0.0) for _ in range(d)]
    for out, label in [(target, 1.0)] + [(n, 0.0) for n in negatives]:
        dot = Counted(0.0)
        for j in range(d):
            dot = dot + wo[out][j] * hidden[j]
        alpha = lr * (label - 1.0 / (1.0 + math.exp(-dot.v)))
        for j in range(d):
            grad[j] = grad[j] + alpha * wo[out][j]
        for j in range(d):
            wo[out][j] = wo[out][j] + alpha * hidden[j]
    for row in bag:
        for j in range(d):
            wi[row][j] = wi[row][j] + 1.0 * grad[j]


def _numpy_step(wi, wo, bag, target, negatives, lr):
    """The same update, vectorized: the reference for what the counted step computes."""
    hidden = wi[bag].mean(axis=0)
    grad = np.zeros_like(hidden)
    for out, label in [(target, 1.0)] + [(n, 0.0) for n in negatives]:
        alpha = lr * (label - 1.0 / (1.0 + np.exp(-wo[out] @ hidden)))
        grad += alpha * wo[out]
        wo[out] += alpha * hidden
    for row in bag:
        wi[row] += grad


def test_one_cbow_update_costs_what_its_arithmetic_counts():
    """Target "x" with context words "ab" and "cde": "ab" brings its row and 3 n-grams (<ab, ab>,
    <ab>), "cde" its row and 6 (<cd, cde, de>, <cde, cde>, <cde>): 11 input rows. dim 3, two
    negatives."""
    rng = np.random.default_rng(0)
    n_in, n_out, d = 14, 5, 3
    wi, wo = rng.normal(size=(n_in, d)), rng.normal(size=(n_out, d))
    ab, cde = [0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 10]  # each word's row first, then its n-grams' rows
    bag, target, negatives = ab + cde, 2, [0, 4]
    cwi = [[Counted(v) for v in r] for r in wi]
    cwo = [[Counted(v) for v in r] for r in wo]
    Counted.ops = 0
    _cbow_step(cwi, cwo, bag, target, negatives, lr=0.1)
    counted = Counted.ops
    _numpy_step(wi, wo, bag, target, negatives, lr=0.1)  # the counted step is a real CBOW update
    np.testing.assert_allclose([[c.v for c in r] for r in cwi], wi, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([[c.v for c in r] for r in cwo], wo, rtol=1e-12, atol=1e-12)

    assert ngram_count("ab", 3, 6) == 3 and ngram_count("cde", 3, 6) == 6
    # hidden 11*3 adds + 3 scalings; per output 6*3; inputs 11 rows * 3 * 2
    assert counted == 33 + 3 + 3 * 18 + 66 == 156
    assert cbow_update_flops(dim=3, context_words=2, ngrams_per_word=(3 + 6) / 2, neg=2) == counted


def test_ngrams_as_fasttext_cuts_them():
    assert ngram_count("ab", 3, 6) == len(["<ab", "ab>", "<ab>"])
    assert ngram_count("▁é", 3, 6) == len(["<▁é", "▁é>", "<▁é>"])  # characters, not UTF-8 bytes
    # "<abcdefgh>": 10 characters; 8 of length 3, 7 of 4, 6 of 5, 5 of 6
    assert ngram_count("abcdefgh", 3, 6) == 8 + 7 + 6 + 5
    # single characters, but not the lone "<" and ">": a, b; then <a, ab, b>
    assert ngram_count("ab", 1, 2) == 2 + 3
    assert ngram_count("</s>", 3, 6) == 0 and ngram_count("abc", 0, 0) == 0


def test_ngram_counts_match_fasttexts_own(tmp_path):
    fasttext = pytest.importorskip("fasttext", reason="the focus extra (fasttext-wheel) is part of make install")
    words = ["ab", "▁é", "abcdefgh", "aaaaaaa", "▁the", "x"]
    (tmp_path / "c.txt").write_text(" ".join(words) + "\n", encoding="utf-8")
    for minn, maxn in ((3, 6), (1, 3), (2, 2)):
        model = fasttext.train_unsupervised(str(tmp_path / "c.txt"), model="cbow", dim=2, epoch=1, minCount=1,
                                            minn=minn, maxn=maxn, bucket=1000, thread=1, verbose=0)
        for w in words:
            subwords, _ = model.get_subwords(w)
            assert ngram_count(w, minn, maxn) == len(subwords) - 1, (w, minn, maxn, subwords)  # less the word


def test_corpus_cost_on_hand_worked_lines():
    """Words a (1 n-gram: <a>), bb (3: <bb, bb>, <bb>), c; minCount 2 prunes c (seen once) and "</s>"
    ends each line with no n-grams. No subsampling (t = 1: every keep probability is above 1).
    Lines as fastText reads them: [a bb a </s>] and [a bb </s>] (c is skipped, so bb follows a).
    Input rows per word: a 2, bb 4, </s> 1."""
    words = ["a", "bb", "c"]
    docs = [[0, 1, 0], [0, 2, 1]]
    settings = {"dim": 2, "neg": 1, "ws": 1, "minCount": 2, "t": 1.0, "epoch": 2, "minn": 3, "maxn": 6}
    est = cbow_cost(docs, words, settings)
    # ws 1: each token's bag is its two neighbours. Line 1: 4, 2+2, 4+1, 2 = 15 rows; line 2: 4, 2+1, 4 = 11.
    rows, updates, context = 15 + 11, 7, 6 + 4
    # Every token of the file counts towards the stop (8 with c and the two "</s>"), only the 7
    # in-vocabulary ones are read: 2 epochs are 16/7 passes.
    passes = 2 * 8 / 7
    assert est["tokens"] == 8 and est["tokens_in_vocab"] == 7 and est["passes"] == pytest.approx(passes)
    assert est["updates_per_pass"] == updates and est["words"] == 3  # a, bb, </s>
    assert est["flops"] == pytest.approx(passes * 2 * (3 * rows + updates * (1 + 6 * 2)))
    assert est["context_words"] == pytest.approx(context / updates)
    assert est["ngrams_per_word"] == pytest.approx(rows / context - 1)
    assert est["flops_per_update"] * passes * updates == pytest.approx(est["flops"])

    # ws 2: the half-width is 1 or 2 with equal chance, so a neighbour 2 away is in half the bags.
    # Line 1 [a bb a </s>]: 4 + 2/2, 2+2 + 1/2, 4+1 + 2/2, 2 + 4/2; line 2 [a bb </s>]: 4 + 1/2, 2+1, 4 + 2/2.
    est2 = cbow_cost(docs, words, {**settings, "ws": 2})
    rows2 = (5 + 4.5 + 6 + 4) + (4.5 + 3 + 5)
    assert est2["flops"] == pytest.approx(passes * 2 * (3 * rows2 + updates * 13))


def _walk_fasttext(docs, words, s, rng):
    """fastText's CBOW loop step by step (getLine's pruning, subsampling and line cut, cbow's window
    draw per token), one pass: the input rows of every bag, and the updates."""
    counts = {}
    for d in docs:
        for t in d:
            counts[words[t]] = counts.get(words[t], 0) + 1
    counts["</s>"] = len(docs)
    ntokens = sum(counts.values())
    keep = {w: math.sqrt(s["t"] * ntokens / c) + s["t"] * ntokens / c for w, c in counts.items()}
    rows = {w: 1 + ngram_count(w, s["minn"], s["maxn"]) for w in counts}
    bag_rows = updates = 0
    for d in docs:
        stream = [words[t] for t in d if counts[words[t]] >= s["minCount"]] + ["</s>"]
        for start in range(0, len(stream), 1025):  # getLine stops after 1025 in-vocabulary tokens
            line = [w for w in stream[start:start + 1025] if rng.random() < keep[w]]
            for i in range(len(line)):
                b = rng.integers(1, s["ws"] + 1)
                bag = [line[j] for j in range(max(0, i - b), min(len(line), i + b + 1)) if j != i]
                if bag:
                    updates += 1
                    bag_rows += sum(rows[w] for w in bag)
    return bag_rows, updates


def test_corpus_cost_matches_a_walk_of_fasttexts_loop():
    """A corpus of 2,000 lines of Zipf-distributed words with frequent-word subsampling on: the
    estimate's per-pass FLOPs against the mean of 5 passes walked token by token (each with its
    own random discards and windows); they agree to well within a percent."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" + "x" * (i % 5) for i in range(300)]
    p = 1.0 / np.arange(1, 301)
    docs = [list(rng.choice(300, size=rng.integers(3, 40), p=p / p.sum())) for _ in range(2000)]
    docs.append(list(rng.choice(300, size=2500, p=p / p.sum())))  # one line longer than getLine's cut
    s = {"dim": 10, "neg": 5, "ws": 5, "minCount": 5, "t": 1e-3, "epoch": 1, "minn": 3, "maxn": 6}
    walks = [_walk_fasttext(docs, words, s, np.random.default_rng(seed)) for seed in range(5)]
    rows, updates = np.mean(walks, axis=0)
    est = cbow_cost(docs, words, s)
    assert est["kept_per_pass"] < 0.9 * est["tokens_in_vocab"]  # subsampling did drop tokens
    walked = s["dim"] * (3 * rows + updates * (1 + 6 * (1 + s["neg"])))
    assert est["flops"] / est["passes"] == pytest.approx(walked, rel=0.01)
    assert est["updates_per_pass"] == pytest.approx(updates, rel=0.01)


def test_combination_flops():
    # [n, d_aux] @ [d_aux, s] and [n, s] @ [s, d]: 2*m*n*k each
    assert combine_flops(new=7, shared=3, aux_dim=5, model_dim=4) == 2 * 7 * 5 * 3 + 2 * 7 * 3 * 4


def test_focus_init_records_its_one_time_cost(tiny_corpus, tiny_target_corpus):
    """The record an adaptation's pack keeps: wall-clock, and FLOPs = fastText's estimate on the
    corpus fastText trained on + the combination's products; fastText's own dictionary has the
    size the estimate assumed."""
    pytest.importorskip("fasttext", reason="the focus extra (fasttext-wheel) is part of make install")
    from ds_minimodel.data.shards import TokenShards
    from ds_minimodel.steps.adapt.common import init_embeddings, shared_pieces
    from ds_minimodel.steps.adapt.focus import FASTTEXT, corpus_documents

    source, corpus = TokenShards.open(str(tiny_corpus)), TokenShards.open(str(tiny_target_corpus))
    source_tok, target_tok = source.tokenizer(), corpus.tokenizer()
    source_word = torch.randn(source_tok.vocab_size, 64, generator=torch.Generator().manual_seed(1))
    _, _, record = init_embeddings("focus", source_word, source_tok, target_tok, seed=3, corpus=corpus)

    ft = record["focus_cost"]["fasttext"]
    assert record["focus_seconds"] > 0
    assert ft["words"] == ft["words_fasttext"]
    assert ft["settings"]["dim"] == FASTTEXT["dim"] and ft["settings"]["neg"] == FASTTEXT["neg"]
    docs = corpus_documents(corpus.tokens("train"), target_tok.eos_id, target_tok.special_ids)
    assert ft["tokens"] == sum(len(d) for d in docs if len(d)) + sum(1 for d in docs if len(d))
    # 3 epochs; minCount 10 prunes a few rare pieces, so slightly more passes
    assert FASTTEXT["epoch"] <= ft["passes"] < FASTTEXT["epoch"] * 1.05
    shared = [i for i, _ in shared_pieces(source_tok, target_tok)]
    assert 0 < record["focus_cost"]["combine_flops"] <= combine_flops(record["rows_focus"], len(shared), 100, 64)
    assert record["focus_flops"] == pytest.approx(ft["flops"] + record["focus_cost"]["combine_flops"])


# The study: each "+focus" ratio without and with the one-time cost (study/one_time_cost.py).

def _scores(seeds, flops, seconds, metric, units=4):
    """MethodScores whose every seed and unit has the same curve: resampling cannot move it, so
    the interval is the point, by hand."""
    from ds_minimodel.study.bootstrap import MethodScores

    s, p = len(seeds), len(flops)
    num = np.broadcast_to(np.asarray(metric, dtype=np.float64)[None, :, None], (s, p, units)).copy()
    return MethodScores(list(seeds), ["init"] + [f"t{i}" for i in range(1, p)], np.arange(p) * 10,
                        np.tile(np.asarray(flops, np.float64), (s, 1)),
                        np.tile(np.asarray(seconds, np.float64), (s, 1)),
                        num, np.ones_like(num))


def _match(scores):
    from ds_minimodel.study.bootstrap import bootstrap_ratios
    from ds_minimodel.study.matching import matched_compute

    curves = {name: m.curve() for name, m in scores.items()}
    return (matched_compute(curves, "full", 1.0, "crossing", "higher", "isotonic"),
            bootstrap_ratios(scores, baseline="full", replicates=40, seed=0))


def test_study_reports_each_focus_ratio_without_and_with_its_one_time_cost():
    """full reaches its final 0.8 at 200 FLOPs (20 s). minipost+focus reaches 0.8 at its second
    point: 20 FLOPs, ratio 200/20 = 10; with its one-time cost of 30 FLOPs (seconds 5 and 7, mean 6)
    at 50 FLOPs, ratio 4, and wall-clock 20 / (2 + 6) = 2.5. full+focus's start already meets the
    target: at 0 FLOPs without the cost (no finite ratio), at its cost (25 FLOPs) with it: ratio 8.
    minijoint+focus never reaches it: within its 20 FLOPs (ratio below 200/20 = 10), and with its
    cost of 30 within 50 (ratio below 4)."""
    from ds_minimodel.study.one_time_cost import with_one_time_costs
    from ds_minimodel.study.render import one_time_lines as ratio_lines, one_time_section as section

    methods = {"full": _scores([0, 1], [0, 100, 200], [0, 10, 20], [0.2, 0.5, 0.8]),
               "minipost+focus": _scores([0, 1], [0, 20, 40], [0, 2, 4], [0.3, 0.8, 0.9]),
               "full+focus": _scores([0, 1], [0, 100, 200], [0, 10, 20], [0.85, 0.9, 0.9]),
               "minijoint+focus": _scores([0, 1], [0, 10, 20], [0, 1, 2], [0.1, 0.2, 0.3])}
    recorded = {0: "recorded by the run", 1: "recorded by the run"}
    costs = {"minipost+focus": {"init": "focus", "flops": {0: 30.0, 1: 30.0}, "seconds": {0: 5.0, 1: 7.0},
                                "source": recorded},
             "full+focus": {"init": "focus", "flops": {0: 25.0, 1: 25.0}, "seconds": {0: None, 1: None},
                            "source": recorded},
             "minijoint+focus": {"init": "focus", "flops": {0: 30.0, 1: 30.0}, "seconds": {0: 1.0, 1: 1.0},
                                 "source": recorded}}
    from ds_minimodel.study.matching import attach_bootstrap

    matched, boot = _match(methods)
    attach_bootstrap(matched, boot)  # as the study does: the intervals without the cost
    assert matched["methods"]["minipost+focus"]["ratio_value"] == pytest.approx(10.0)
    assert matched["methods"]["full+focus"]["flops_to_target"] == 0

    got = with_one_time_costs(methods, costs, _match)
    mp, ff, mj = got["minipost+focus"], got["full+focus"], got["minijoint+focus"]
    assert mp["cost_flops"] == 30.0 and mp["cost_seconds"] == 6.0
    assert mp["flops_to_target"] == pytest.approx(50.0) and mp["ratio"] == pytest.approx(4.0)
    assert mp["interval"] == pytest.approx([4.0, 4.0])
    assert mp["seconds_to_target"] == pytest.approx(8.0) and mp["ratio_seconds"] == pytest.approx(2.5)
    assert ff["flops_to_target"] == pytest.approx(25.0) and ff["ratio"] == pytest.approx(8.0)
    assert ff["note"] == "its start (the FOCUS init, at its one-time cost) meets the target"
    assert ff["cost_seconds"] is None and ff["ratio_seconds"] is None  # seconds not recorded: no wall-clock ratio
    assert not mj["reached"] and mj["total_flops"] == 50.0
    assert set(got) == set(costs)  # the baseline is not repeated
    assert methods["minipost+focus"].flops[0, 1] == 20  # the study's own curves are left as they were

    study = {"matched": matched, "one_time_cost": got}
    lines = ratio_lines({"level": 0.95, "metrics": {"accuracy": study}})
    assert lines[0] == ("study minipost+focus with its one-time cost (focus: 3.000e+01 FLOPs, 6.0 s): compute ratio "
                        "4.00 (95% interval 4.00-4.00) at matched accuracy; n = 40 of 40 replicates; without it: "
                        "compute ratio 10.00")
    assert lines[1].startswith("study full+focus with its one-time cost (focus: 2.500e+01 FLOPs): compute ratio 8.00 "
                               "(95% interval 8.00-8.00) at matched accuracy; n = 40 of 40 replicates; without it: ")
    assert "8.00" not in lines[1].split("without it")[1]  # its start meets the target at 0 FLOPs: no finite ratio
    assert lines[2].startswith("study minijoint+focus with its one-time cost (focus: 3.000e+01 FLOPs, 1.0 s): compute "
                               "ratio < 4.00 (a bound: not reached within 50 FLOPs)")
    assert lines[2].endswith("without it: compute ratio < 10.00 (a bound: not reached within 20 FLOPs)")
    table = "\n".join(section(study, 0.95))
    assert ("| minipost+focus | focus | 3.000e+01 | 6.0 | 10.00 | 10.00-10.00 (n = 40 of 40) | 4.00 | "
            "4.00-4.00 (n = 40 of 40) | 2.50 | recorded by the run |") in table
    assert "| full+focus | focus | 2.500e+01 | not recorded | " in table
    assert ("| 8.00 | 8.00-8.00 (n = 40 of 40) | - | recorded by the run | its start (the FOCUS init, at its "
            "one-time cost) meets the target |") in table


def test_one_time_costs_come_from_the_pack_record_or_a_rebuild(monkeypatch):
    from types import SimpleNamespace

    from ds_minimodel.study import one_time_cost

    def run(seed, init, provenance):
        return SimpleNamespace(seed=seed, config=SimpleNamespace(adapt=SimpleNamespace(init=init)),
                               info=SimpleNamespace(provenance=provenance))

    rebuilt = []
    monkeypatch.setattr(one_time_cost, "init_record",
                        lambda r: rebuilt.append(r.seed) or {"focus_flops": 7e9, "focus_seconds": 3.5})
    opened = {"full": [run(0, "random", {"init": "random"})],
              "minipost+focus": [run(0, "focus", {"focus_flops": 7e9, "focus_seconds": 2.0}),
                                 run(1, "focus", {"init": "focus"})]}  # a pack from before the record
    costs = one_time_cost.one_time_costs(opened, log=lambda _: None)
    assert list(costs) == ["minipost+focus"] and rebuilt == [1]
    assert costs["minipost+focus"]["flops"] == {0: 7e9, 1: 7e9}
    assert costs["minipost+focus"]["seconds"] == {0: 2.0, 1: 3.5}
    assert costs["minipost+focus"]["source"] == {0: "recorded by the run", 1: "measured again by the study"}
