"""Tasks: loaders on fixtures in the released formats, Bible stand-ins, metrics, batching."""

import json
import math
import os

import pytest
import torch

from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.tasks import (
    XNLI_LABELS,
    ClassificationExample,
    QAExample,
    batching,
    bible,
    encode_qa,
    from_hf_datasets,
    load_task,
    metrics,
    qa_predictions,
    span_text,
    task_data,
)
from ds_minimodel.tokenizers.sentencepiece import sentencepiece_offsets, train_tokenizer

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tasks")
BAD = os.path.join(FIX, "malformed")


def _verse_key(vid: str) -> tuple[int, int, int]:
    b, c, v = (int(x) for x in vid.split("."))
    return b, c, v


# --------------------------------------------------------------------------------------------
# Loaders


def test_xnli_eval_files_filter_by_language():
    en = load_task("xnli", FIX, "en", "validation")
    assert [ex.label for ex in en] == [1, 2, 0, 0]  # neutral, contradiction, entailment, entailment
    assert en[0] == ClassificationExample("The museum opens at nine every morning.",
                                          "The museum is busy in the morning.", 1, "en-1")
    # No quoting: an unbalanced quote stays in its own row instead of swallowing the next lines.
    assert en[3].text_a == 'He said "no problem and left.' and en[3].text_b == "He left."
    assert len(load_task("xnli", FIX, "de", "dev")) == 3
    assert [ex.label for ex in load_task("xnli", FIX, "fr", "validation")] == [1, 0]
    test_de = load_task("xnli", os.path.join(FIX, "XNLI-1.0"), "de", "test")
    assert [(ex.label, ex.id) for ex in test_de] == [(2, "de-11"), (1, "de-12")]
    # The file itself works as the path too.
    assert load_task("xnli", os.path.join(FIX, "XNLI-1.0", "xnli.test.tsv"), "en", "test")[0].label == 2
    with pytest.raises(InvalidValueError,
                       match=r"xnli\.dev\.tsv has no rows for language 'sw' \(languages present: de, en, fr\)"):
        load_task("xnli", FIX, "sw", "validation")


def test_xnli_mt_train():
    en = load_task("xnli", FIX, "en", "train")
    assert len(en) == 7
    assert [ex.label for ex in en] == [0, 0, 0, 1, 1, 2, 2]  # "contradictory" -> contradiction
    assert XNLI_LABELS[en[-1].label] == "contradiction"
    assert en[-1].text_a == 'He said "wait here and went out.'
    de = load_task("xnli", os.path.join(FIX, "XNLI-MT-1.0"), "de", "train")
    assert [ex.label for ex in de] == [2, 0, 1] and de[0].text_b == "Die Saison ist kurz."


def test_pawsx_layout_and_labels():
    en_train = load_task("paws-x", FIX, "en", "train")
    assert len(en_train) == 5 and [ex.label for ex in en_train] == [0, 1, 0, 1, 1]
    assert en_train[0].id == "1" and en_train[0].text_b.startswith("In March 1712")
    de_train = load_task("pawsx", FIX, "de", "train")  # translated_train.tsv
    assert len(de_train) == 2 and de_train[1].text_a.startswith("Die Ligasaison")
    assert [len(load_task("paws-x", FIX, lang, s)) for lang in ("en", "de") for s in ("dev", "test")] == [3, 2, 2, 3]
    with pytest.raises(MissingFileError, match=r"no paws-x test file for language 'fr' under .*test_2k\.tsv"):
        load_task("paws-x", FIX, "fr", "test")


def test_mlqa_squad_json():
    dev = load_task("mlqa", FIX, "en", "validation")
    assert [ex.id for ex in dev] == ["q-dev-1", "q-dev-2", "q-dev-3", "q-dev-4"]
    assert dev[0].title == "Rhine" and dev[0].question == "Where does the Rhine begin?"
    assert [a["text"] for a in dev[2].answers] == ["the Danube", "Danube"]
    for ex in dev:
        for a in ex.answers:
            assert ex.context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
    cross = load_task("mlqa", FIX, "de", "test", question_language="en")  # context de, question en
    assert cross[0].question.startswith("What") and cross[0].context.startswith("Sauerstoff")
    assert len(load_task("mlqa", FIX, "de", "test")) == 2
    train = load_task("mlqa", FIX, "en", "train")  # SQuAD v1.1 train
    assert [ex.answers[0]["text"] for ex in train] == ["a bronze figure of a sailor", "1902"]


def test_task_data_zero_shot_setting():
    td = task_data("xnli", FIX, ["de", "en"])
    assert td.num_labels == 3 and td.label_names == XNLI_LABELS
    assert (len(td.train), len(td.validation), td.language, td.train_language) == (7, 4, "de", "en")
    assert td.test is td.tests["de"] and len(td.tests["en"]) == 2
    qa = task_data("mlqa", FIX, "de")
    assert qa.is_qa and qa.num_labels == "qa" and len(qa.train) == 2 and len(qa.test) == 2


@pytest.mark.parametrize("task,file,pattern", [
    ("xnli", "xnli_bad_label.tsv", r"xnli_bad_label\.tsv: line 3: gold_label 'maybe' is not one of"),
    ("xnli", "xnli_missing_column.tsv",
     r"xnli_missing_column\.tsv: line 1 \(header\) lacks column\(s\) sentence2 of the XNLI-1.0 format"),
    ("paws-x", "pawsx_short_row.tsv", r"pawsx_short_row\.tsv: line 3: 3 tab-separated fields, the header has 4"),
    ("paws-x", "pawsx_bad_label.tsv", r"pawsx_bad_label\.tsv: line 3: label '' is not 0 or 1"),
    ("mlqa", "mlqa_answer_start_string.json",
     r"mlqa_answer_start_string\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\]\.answers\[0\]\.answer_start "
     r"is not an integer"),
    ("mlqa", "mlqa_not_squad.json", r"mlqa_not_squad\.json: top level has no 'data' list"),
    ("mlqa", "mlqa_truncated.json", r"mlqa_truncated\.json: line \d+ column \d+: invalid JSON"),
])
def test_malformed_files_name_file_and_place(task, file, pattern):
    with pytest.raises(UserError, match=pattern):
        load_task(task, os.path.join(BAD, file), "en", "test")


def test_skip_bad_rows_warns_with_count():
    with pytest.warns(UserWarning, match=r"pawsx_short_row\.tsv: skipped 1 malformed row\(s\) \(first: line 3"):
        rows = load_task("paws-x", os.path.join(BAD, "pawsx_short_row.tsv"), "en", "test", skip_bad_rows=True)
    assert [ex.id for ex in rows] == ["1", "3"]


def test_bad_names_and_paths():
    with pytest.raises(InvalidValueError, match="task 'nli' is not one of xnli, paws-x, mlqa"):
        load_task("nli", FIX, "en", "test")
    with pytest.raises(InvalidValueError, match="split 'eval' is not one of"):
        load_task("xnli", FIX, "en", "eval")
    with pytest.raises(MissingFileError, match="xnli data path /nonexistent does not exist"):
        load_task("xnli", "/nonexistent", "en", "test")


def test_crlf_and_bom_are_accepted(tmp_path):
    src = open(os.path.join(FIX, "x-final", "en", "dev_2k.tsv"), encoding="utf-8").read()
    path = tmp_path / "dev_2k.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + src.replace("\n", "\r\n").encode())
    assert load_task("paws-x", str(path), "en", "dev") == load_task("paws-x", FIX, "en", "dev")


def test_hf_datasets_path_is_offline_only(tmp_path):
    # Not cached -> a UserError that says how to use local files, and no download attempt.
    with pytest.raises(UserError, match=r"not in the local Hugging Face datasets cache.*load_task\('xnli'"):
        from_hf_datasets("xnli", "en", "test", cache_dir=str(tmp_path / "empty_cache"))
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # conftest's value is restored
    import datasets

    dd = datasets.DatasetDict({"test": datasets.Dataset.from_dict(
        {"premise": ["A b.", "C d."], "hypothesis": ["E f.", "G h."], "label": [2, 0]})})
    dd.save_to_disk(str(tmp_path / "xnli_saved"))
    rows = from_hf_datasets("xnli", "en", "test", saved=str(tmp_path / "xnli_saved"))
    assert [(ex.text_a, ex.label) for ex in rows] == [("A b.", 2), ("C d.", 0)]


# --------------------------------------------------------------------------------------------
# Bible stand-in tasks


@pytest.fixture(scope="module")
def genre():
    return bible.verse_genre_task(seed=0)


def test_verse_genre_task_splits(genre):
    from ds_minimodel.data.bible_table import BOOK_GENRE, GENRES, heldout_chapters

    heldout = heldout_chapters()
    assert genre.num_labels == len(GENRES) == 6 and genre.label_names == GENRES
    train_keys = {_verse_key(ex.id) for ex in genre.train}
    valid_keys = {_verse_key(ex.id) for ex in genre.validation}
    test_keys = [_verse_key(ex.id) for ex in genre.tests["en"]]
    assert not any(k[:2] in heldout for k in train_keys | valid_keys)
    assert all(k[:2] in heldout for k in test_keys)
    assert not {k[:2] for k in train_keys} & {k[:2] for k in valid_keys}  # whole validation chapters
    # Paired test sets: the same verses, in the same order, in English and Chichewa.
    assert genre.test is genre.tests["ny"] and genre.language == "ny" and genre.train_language == "en"
    assert [ex.id for ex in genre.tests["ny"]] == [ex.id for ex in genre.tests["en"]]
    assert [ex.label for ex in genre.tests["ny"]] == [ex.label for ex in genre.tests["en"]]
    assert genre.tests["ny"][0].text_a != genre.tests["en"][0].text_a
    # Labels are the book's genre; every class appears in every split; training is capped and balanced.
    assert all(genre.label_names[ex.label] == BOOK_GENRE[_verse_key(ex.id)[0]] for ex in genre.train)
    counts = genre.meta["class_counts"]
    assert set(counts["train"].values()) == {bible.MAX_TRAIN_PER_CLASS}
    assert all(v > 0 for split in counts.values() for v in split.values())
    # No test verse's English text occurs in training.
    assert not {ex.text_a for ex in genre.tests["en"]} & {ex.text_a for ex in genre.train}
    majority = max(counts["test"].values()) / len(genre.test)
    assert genre.meta["chance"]["majority"] == pytest.approx(majority) and 1 / 6 < majority < 0.3


def test_verse_genre_task_is_deterministic_and_seeded(genre):
    again = bible.verse_genre_task(seed=0)
    assert again.train == genre.train and again.tests == genre.tests
    other = bible.verse_genre_task(seed=1, max_train_per_class=50, max_validation_per_class=10)
    assert [ex.id for ex in other.tests["ny"]] == [ex.id for ex in genre.tests["ny"]]  # test never moves
    assert len(other.train) == 300 and len(other.validation) == 60


def test_verse_retrieval_pairs():
    from ds_minimodel.data.bible_table import heldout_chapters

    pairs = bible.verse_retrieval_pairs()
    heldout = heldout_chapters()
    assert len(pairs) == bible.MAX_RETRIEVAL_PAIRS
    assert all(_verse_key(p.id)[:2] in heldout for p in pairs)
    assert len({p.english for p in pairs}) == len({p.target for p in pairs}) == len(pairs)
    assert [_verse_key(p.id) for p in pairs] == sorted(_verse_key(p.id) for p in pairs)
    assert pairs == bible.verse_retrieval_pairs()
    with pytest.raises(InvalidValueError, match="retrieval split 'test'"):
        bible.verse_retrieval_pairs("test")


# --------------------------------------------------------------------------------------------
# Metrics


def test_classification_metrics_by_hand():
    preds, labels = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    # Per class F1 = 2tp / (2tp + fp + fn): class 0: 2/4, class 1: 4/5, class 2: 2/3.
    assert metrics.macro_f1(preds, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics.macro_f1(preds, labels, num_labels=4) == pytest.approx((0.5 + 0.8 + 2 / 3 + 0) / 4)
    with pytest.raises(InvalidValueError, match="2 predictions for 3 labels"):
        metrics.macro_f1([0, 1], [0, 1, 1])


def test_paired_difference_matches_numpy():
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.3, rng.random(500) < 0.25
    diff, se = metrics.paired_difference(a.tolist(), b.tolist())
    d = a.astype(float) - b.astype(float)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    assert metrics.paired_difference([True, False, True], [True, False, True]) == (0.0, 0.0)
    with pytest.raises(InvalidValueError, match="not the same examples"):
        metrics.paired_difference([True], [True, False])


def test_squad_normalisation_known_cases():
    norm = metrics.normalize_answer
    assert norm("The  Quick, brown fox!") == "quick brown fox"
    assert norm("an apple a day") == "apple day"
    assert norm("theatre") == "theatre"  # articles only as whole words
    assert metrics.exact_match_score("the Danube", "Danube") == 1.0
    assert metrics.f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert metrics.f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)  # P=1, R=2/3
    assert metrics.f1_score("Paris", "London") == 0.0
    # SQuAD v1.1 only strips ASCII punctuation; MLQA strips every Unicode punctuation character.
    assert metrics.exact_match_score("\u201cCologne\u201d", "Cologne") == 0.0
    assert metrics.exact_match_score("\u201cCologne\u201d", "Cologne", lang="en") == 1.0
    assert norm("Der Rhein", "de") == "rhein" and norm("La casa", "es") == "casa"
    assert norm("北京大学。", "zh") == "北 京 大 学"  # mixed segmentation: CJK characters are tokens
    assert metrics.f1_score("北京", "北京大学", "zh") == pytest.approx(2 / 3)


def test_qa_metrics_aggregate():
    refs = {"a": ["Denver Broncos"], "b": ["the Danube", "Danube"], "c": ["1774"]}
    out = metrics.qa_metrics({"a": "Broncos", "b": "Danube river", "x": "ignored"}, refs)
    # a: EM 0, F1 2/3; b: EM 0, F1 max(2/3, 2/3); c: missing -> 0.
    assert out == pytest.approx({"exact_match": 0.0, "f1": (2 / 3 + 2 / 3) / 3, "count": 3, "missing": 1})
    examples = [QAExample("q", "ctx 8 ctx", "?", [{"text": "8", "answer_start": 4}])]
    assert metrics.qa_metrics({"q": "8"}, examples)["exact_match"] == 1.0


def test_retrieval_metrics_by_hand():
    def at(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    src = torch.tensor([at(0), at(90), at(45)]) * 3  # scale does not matter (cosine)
    tgt = torch.tensor([at(10), at(80), at(170)])
    out = metrics.retrieval_metrics(src, tgt)
    # src->tgt gold ranks 1, 1, 3 (45 deg is 35 deg from tgt 0 and 1, 125 from tgt 2);
    # tgt->src gold ranks 1, 1, 2 (170 deg is 80 deg from src 1, 125 from src 2, 170 from src 0).
    assert out["src2tgt_top1"] == pytest.approx(2 / 3) and out["src2tgt_mrr"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert out["tgt2src_top1"] == pytest.approx(2 / 3) and out["tgt2src_mrr"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert out["mrr"] == pytest.approx(((7 / 3) / 3 + (5 / 2) / 3) / 2)
    # The same ranks per pair (what the compute-budget study resamples).
    ranks = metrics.retrieval_ranks(src, tgt)
    assert ranks["src2tgt"].tolist() == [1, 1, 3] and ranks["tgt2src"].tolist() == [1, 1, 2]
    collapsed = metrics.retrieval_metrics(torch.ones(4, 3), torch.ones(4, 3))  # ties count against the query
    assert collapsed["top1"] == 0.0 and collapsed["mrr"] == pytest.approx(0.25)
    assert metrics.retrieval_metrics(torch.eye(5).numpy(), torch.eye(5))["top1"] == 1.0
    with pytest.raises(InvalidValueError, match="same shape"):
        metrics.retrieval_metrics(torch.eye(3), torch.eye(4))


# --------------------------------------------------------------------------------------------
# Batching


def _fixture_lines():
    lines = []
    for root, _, files in os.walk(FIX):
        if "malformed" in root:
            continue
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.endswith(".tsv"):
                for line in open(path, encoding="utf-8").read().splitlines()[1:]:
                    lines.extend(f for f in line.split("\t") if len(f) > 20)
            else:
                for article in json.load(open(path, encoding="utf-8"))["data"]:
                    for para in article["paragraphs"]:
                        lines.append(para["context"])
                        lines.extend(qa["question"] for qa in para["qas"])
    return sorted(set(lines))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("task_tok")
    (d / "lines.txt").write_text("\n".join(_fixture_lines()) + "\n", encoding="utf-8")
    return train_tokenizer([str(d / "lines.txt")], str(d / "sp"), 160)


def test_offsets_align_with_encode(tok):
    text = "  The Rhine rises in Graubünden,  東京 and Cologne."
    ids, spans = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert all(b < e for b, e in spans) and all(e0 <= b1 for (_, e0), (b1, _) in zip(spans, spans[1:]))
    assert "".join(text[b:e] for b, e in spans).split() == text.split()  # spans cover every word


def test_offsets_fallback_for_older_sentencepiece(tok):
    # sentencepiece < 0.2.1 has no "offset_mapping" but an "immutable_proto" whose spans may
    # be byte offsets: simulate it with the real proto output (byte offsets) and compare.
    class OldProcessor:
        def encode(self, text, out_type):
            if out_type == "offset_mapping":
                raise ValueError("Invalid return_type")
            assert out_type == "immutable_proto"
            return tok._sp.encode(text, out_type="proto")

    text = "Graubünden — 東京, Köln."
    assert sentencepiece_offsets(OldProcessor(), text) == tok.encode_with_offsets(text)


def test_classification_pair_layout_and_padding(tok):
    exs = [ClassificationExample("The museum opens at nine.", "It is busy.", 1, "a"),
           ClassificationExample("Short.", None, 0, "b")]
    enc = batching.encode_texts(exs, tok, max_len=64)
    batch = batching.padded_batch(enc, range(2), tok.pad_id)
    a, b = tok.encode(exs[0].text_a), tok.encode(exs[0].text_b)
    pair = [tok.bos_id] + a + [tok.eos_id, tok.eos_id] + b + [tok.eos_id]
    single = [tok.bos_id] + tok.encode("Short.") + [tok.eos_id]
    assert batch["input_ids"][0].tolist() == pair
    assert batch["input_ids"][1].tolist() == single + [tok.pad_id] * (len(pair) - len(single))
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(pair), len(single)]
    assert batching.padded_batch(enc, [1, 0], tok.pad_id, length=64)["input_ids"].shape == (2, 64)


def test_truncation_longest_first(tok):
    def rust(n1, n2, max_length):  # tokenizers' truncate_encodings, LongestFirst, line for line
        if n1 + n2 <= max_length:
            return n1, n2
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > max_length else max(n1, max_length - n1)
        if n1 + n2 > max_length:
            n1 = max_length // 2
            n2 = n1 + max_length % 2
        return (n2, n1) if swap else (n1, n2)

    for la in range(0, 13):
        for lb in range(0, 13):
            for budget in range(0, 20):
                assert batching.truncate_longest_first(la, lb, budget) == rust(la, lb, budget), (la, lb, budget)
    assert batching.truncate_longest_first(13, 32, 13) == (6, 7)  # the odd token goes to the longer text
    long_a = "the season is long and i guess at your level you lose players to the next team " * 3
    ex = ClassificationExample(long_a, "Players leave.", 0, "t")
    b = tok.encode("Players leave.")
    max_len = 2 * len(b) + 6  # room for all of b: the long text gives up the rest
    ids = batching.encode_texts([ex], tok, max_len=max_len).ids[0]
    keep_a = max_len - 4 - len(b)
    assert len(ids) == max_len and len(tok.encode(long_a)) > keep_a
    assert ids == [tok.bos_id] + tok.encode(long_a)[:keep_a] + [tok.eos_id, tok.eos_id] + b + [tok.eos_id]


def _qa_examples():
    return load_task("mlqa", FIX, "en", "validation") + load_task("mlqa", FIX, "en", "test") + \
        load_task("mlqa", FIX, "de", "test") + load_task("mlqa", FIX, "en", "train")


def test_qa_answer_positions_round_trip(tok):
    examples = _qa_examples()
    feats = encode_qa(examples, tok, max_len=384)
    assert len(feats) == len(examples) and not feats.unlocated  # everything fits one window
    for f, ei in enumerate(feats.example_index):
        ex, s, e = examples[ei], int(feats.start_positions[f]), int(feats.end_positions[f])
        assert 0 < s <= e
        assert span_text(ex, feats.offsets[f], s, e) == ex.answers[0]["text"]
        row = feats.input_ids[f][feats.attention_mask[f].bool()].tolist()
        q = tok.encode(ex.question)
        assert row[:len(q) + 3] == [tok.bos_id] + q + [tok.eos_id, tok.eos_id] and row[-1] == tok.eos_id


def test_qa_sliding_windows(tok):
    examples = load_task("mlqa", FIX, "en", "validation")  # one long context, 4 questions
    n_ctx = len(tok.encode(examples[0].context))
    feats = encode_qa(examples, tok, max_len=48, doc_stride=16, max_query_len=12)
    assert feats.input_ids.shape[1] == 48 and len(feats) > len(examples)
    for ei, ex in enumerate(examples):
        fs = [f for f, e in enumerate(feats.example_index) if e == ei]
        # Consecutive windows start doc_stride tokens apart and together cover the context.
        covered = set()
        for f in fs:
            covered |= {off for off in feats.offsets[f] if off is not None}
        assert len(covered) == n_ctx
        # Each context token is max-context in exactly one window.
        best = [sum(feats.max_context[f][t] for t in range(len(feats.offsets[f]))) for f in fs]
        assert sum(best) == n_ctx
        # Windows holding the answer round-trip to it; the others point at <s>.
        holders = [f for f in fs if feats.start_positions[f] > 0]
        assert holders, ex.id
        for f in holders:
            text = span_text(ex, feats.offsets[f], int(feats.start_positions[f]), int(feats.end_positions[f]))
            assert text == ex.answers[0]["text"]
        assert all(int(feats.end_positions[f]) == 0 for f in fs if f not in holders)
    # Predicted spans map back to text: logits peaked at the labelled positions recover the answers.
    start = torch.full(feats.input_ids.shape, -5.0)
    end = torch.full(feats.input_ids.shape, -5.0)
    for f in range(len(feats)):
        if feats.start_positions[f] > 0:
            start[f, feats.start_positions[f]] = 5.0
            end[f, feats.end_positions[f]] = 5.0
    preds = qa_predictions(feats, examples, start, end)
    assert metrics.qa_metrics(preds, examples)["exact_match"] == 1.0
    again = encode_qa(examples, tok, max_len=48, doc_stride=16, max_query_len=12)
    assert torch.equal(again.input_ids, feats.input_ids) and again.offsets == feats.offsets


def test_qa_unlocatable_answer_and_limits(tok):
    ex = QAExample("bad", "The harbour library was built in 1902.", "When?", [{"text": "1903", "answer_start": 33}])
    feats = encode_qa([ex], tok, max_len=64)
    assert feats.unlocated == ["bad"] and feats.start_positions.tolist() == [0]
    with pytest.raises(InvalidValueError, match="leaves no room for context"):
        encode_qa([ex], tok, max_len=4)
