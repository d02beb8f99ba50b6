"""A user's own Bible (USFM or TSV) as a language outside the table: read back exactly, prepared as
the recipes prepare a Bible, refused in one line when malformed, and adapted and scored end to end.

The files are written here from the Chichewa Bible, under the code "xx-test", with the markers a
translator's USFM carries; what they must read back as is the Chichewa text itself."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from ds_minimodel.data import bible_table, bibles, user_bible
from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.tasks import bible
from tests.helpers import run_step

CODE = "xx-test"
# Genesis 1-12 (11 is held out), two Psalms (23 held out), Matthew 17-18 (18 held out), John 20
# (held out): four genres, four held-out chapters for the tasks and sixteen to train on.
CHAPTERS = [(1, c) for c in range(1, 13)] + [(19, 22), (19, 23), (40, 17), (40, 18), (43, 20)]
CODES = {1: "GEN", 19: "PSA", 40: "MAT", 43: "JHN"}
RANGE_AT = (1, 2, 3)  # "\v 3-4" in Genesis 2: verses 3 and 4 under 3


@pytest.fixture(autouse=True)
def clean_registry():
    user_bible.forget()
    yield
    user_bible.forget()


def _source() -> dict:
    ny = bibles.chichewa_verses()
    return {k: t for k, t in sorted(ny.items()) if k[:2] in CHAPTERS}


def _expected(source: dict) -> dict:
    """What a USFM reader must return: the source, with Genesis 2:3-4 under 2:3."""
    out = dict(source)
    b, c, v = RANGE_AT
    out[(b, c, v)] = source[(b, c, v)] + " " + out.pop((b, c, v + 1))
    return out


def _marked(i: int, text: str, ref: str) -> list[str]:
    """One verse's text as USFM lines: a footnote, a cross-reference, character markers, word
    attributes or a poetry line break, by turns."""
    words = text.split(" ")
    head, rest = words[0], " ".join(words[1:])
    kind = i % 5
    if kind == 0 and rest:
        return [f"{head}\\f + \\fr {ref} \\ft Mawu: {head}.\\f* {rest}"]
    if kind == 1 and rest:
        return [f"{head}\\x - \\xo {ref}: \\xt Gen 1:1\\x* {rest}"]
    if kind == 2 and len(words) > 2:
        return [f"{head} \\add {words[1]}\\add* {' '.join(words[2:-1])} \\wj \\+nd {words[-1]}\\+nd*\\wj*"
                .replace("  ", " ")]
    if kind == 3 and len(words) > 3:
        return [f"\\w {head}|lemma=\"{head.lower()}\" strong=\"H{i}\"\\w* {' '.join(words[1:3])}",
                f"\\q2 {' '.join(words[3:])}"]
    return [text]


def write_usfm(path: Path, source: dict, books=None) -> Path:
    lines = ["\\id FRT front matter", "\\mt1 Buku", "\\ip Mawu oyamba.", "\\c 1", "\\v 1 Osati vesi la Baibulo."]
    for book in books or sorted({k[0] for k in source}):
        lines += [f"\\id {CODES[book]} Chichewa (test)", "\\usfm 3.0", f"\\h {CODES[book]}", f"\\toc1 Buku {book}",
                  f"\\mt1 Buku la {CODES[book]}"]
        chapters = sorted({k[1] for k in source if k[0] == book})
        for c in chapters:
            lines += [f"\\c {c}", "\\s1 Mutu wa gawo", "\\p"]
            verses = sorted(v for b, cc, v in source if (b, cc) == (book, c))
            for i, v in enumerate(verses):
                key = (book, c, v)
                if key[:2] == RANGE_AT[:2] and v == RANGE_AT[2] + 1:
                    continue  # printed with the verse before it
                if key == RANGE_AT:
                    lines.append(f"\\v {v}-{v + 1} {source[key]}")
                    lines.append(source[(book, c, v + 1)])
                    continue
                body = _marked(i, source[key], f"{c}:{v}")
                lines.append(f"\\v {v} {body[0]}")
                lines += body[1:]
                if i % 7 == 6:
                    lines += ["\\s2 Kamutu", "\\p"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_tsv(path: Path, source: dict) -> Path:
    rows = ["book\tchapter\tverse\ttext"]
    # The book by USFM code in Genesis, by number elsewhere: both are accepted.
    rows += [f"{CODES[b] if b == 1 else b}\t{c}\t{v}\t{text}" for (b, c, v), text in source.items()]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Reading


def test_usfm_reads_back_the_source_verses(tmp_path):
    source = _source()
    path = write_usfm(tmp_path / "xx.usfm", source)
    got = user_bible.read_bible_file(str(path))
    assert dict(got.verses) == _expected(source)
    assert got.format == "usfm" and got.verse_ranges == 1 and got.skipped_books == ("FRT",)
    assert got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The same text as a directory of one file per book, as translators publish it.
    folder = tmp_path / "books"
    folder.mkdir()
    for book in CODES:
        write_usfm(folder / f"{book:02d}-{CODES[book]}.SFM", {k: t for k, t in source.items() if k[0] == book},
                   books=[book])
    (folder / "readme.txt").write_text("not USFM")
    assert dict(user_bible.read_bible_file(str(folder)).verses) == _expected(source)


def test_tsv_reads_back_the_source_verses(tmp_path):
    source = _source()
    got = user_bible.read_bible_file(str(write_tsv(tmp_path / "xx.tsv", source)))
    assert dict(got.verses) == source and got.format == "tsv" and got.verse_ranges == 0
    # No header, and no suffix: told apart from USFM by its first line.
    bare = tmp_path / "bare.txt"
    bare.write_text("GEN\t1\t1\tPoyamba\n2\t1\t1\tNdipo\n", encoding="utf-8")
    assert dict(user_bible.read_bible_file(str(bare)).verses) == {(1, 1, 1): "Poyamba", (2, 1, 1): "Ndipo"}


USFM_HEAD = "\\id GEN\n\\c 1\n\\p\n\\v 1 Poyamba.\n"
MALFORMED = [
    # (file name, content, line, what the message says)
    ("a.usfm", USFM_HEAD + "\\id XYZ\n", 5, "unknown book code 'XYZ'"),
    ("a.usfm", USFM_HEAD + "\\v 2 Ndipo.\n\\v 1 Kachiwiri.\n", 6, "duplicate verse GEN 1:1 (first at "),
    ("a.usfm", "\\id GEN\n\\p\n\\v 1 Poyamba.\n", 3, "verse \\v 1 before any chapter (\\c)"),
    ("a.usfm", "\\c 1\n\\v 1 Poyamba.\n", 1, "chapter before any \\id line"),
    ("a.usfm", "\\id GEN\n\\c one\n", 2, "chapter 'one' is not a positive integer"),
    ("a.usfm", USFM_HEAD + "\\v 2a Ndipo.\n", 5, "verse '2a' is not a positive integer (or a range such as 3-4)"),
    ("a.usfm", USFM_HEAD + "\\v 2\n\\v 3 Ndipo.\n", 5, "GEN 1:2 has no text"),
    ("a.usfm", USFM_HEAD + "\\v 2 Ndipo\\f + \\ft cholemba\n\\v 3 Ndipo.\n", 5, "\\f is not closed"),
    ("a.usfm", "\\id GEN\n\\h Genesis\n", None, "no verses"),
    ("a.tsv", "GEN\t1\t1\tPoyamba\nGEN\t1\t1\tKachiwiri\n", 2, "duplicate verse GEN 1:1"),
    ("a.tsv", "book\tchapter\tverse\ttext\nGEN\t1\t1\n", 2, "3 tab-separated column(s), expected 4"),
    ("a.tsv", "GEN\t1\t1\tPoyamba\nGEN\t1\t2\tNdipo\tzambiri\n", 2, "5 tab-separated column(s)"),
    ("a.tsv", "GEN\t1\tx\tPoyamba\n", 1, "verse 'x' is not a positive integer"),
    ("a.tsv", "GEN\t1\t1\tPoyamba\nGEN\t0\t2\tNdipo\n", 2, "chapter '0' is not a positive integer"),
    ("a.tsv", "GEN\t1\t1\t \n", 1, "GEN 1:1 has no text"),
    ("a.tsv", "GEN\t1\t1\tPoyamba\nGNS\t1\t1\tNdipo\n", 2, "unknown book code 'GNS'"),
    ("a.tsv", "67\t1\t1\tPoyamba\n", 1, "book number 67 is not in 1..66"),
    ("a.tsv", "\n\n", None, "no verses"),
]


@pytest.mark.parametrize("name,content,line,message", MALFORMED, ids=[m[3][:30] for m in MALFORMED])
def test_malformed_files_are_refused_in_one_line_naming_the_line(tmp_path, name, content, line, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidValueError) as err:
        user_bible.read_bible_file(str(path))
    text = str(err.value)
    where = f"{path}, line {line}: " if line else f"{path}: "
    assert text.startswith(where) and message in text and "\n" not in text, text


def test_the_launcher_refuses_a_bad_file_before_writing_anything(tmp_path, capsys):
    from launchers.prepare_data import main

    bad = tmp_path / "bad.tsv"
    bad.write_text("GEN\t1\t1\tPoyamba\nGEN\t1\t1\tKachiwiri\n", encoding="utf-8")
    out = tmp_path / "out"
    for argv, needle in (
            (["--bible-file", str(bad), "--language", CODE], f"{bad}, line 2: duplicate verse GEN 1:1"),
            (["--bible-file", str(bad), "--language", "ny"], "'ny' is a language of the built-in table"),
            (["--bible-file", str(bad), "--language", "en-cipher"], "'en-cipher' is a language of the built-in"),
            (["--bible-file", str(bad)], "--bible-file and --language go together"),
            (["--bible-file", str(tmp_path / "nope.usfm"), "--language", CODE], "nope.usfm does not exist")):
        assert main(argv + ["--out", str(out), "--vocab-size", "100"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Preparing


def _prepare(bible_file: Path, out: Path) -> dict:
    from launchers.prepare_data import main

    assert main(["--bible-file", str(bible_file), "--language", CODE, "--out", str(out), "--vocab-size", "200",
                 "--valid-fraction", "0.1"]) == 0
    return json.loads((out / "index.json").read_text())


def test_prepared_like_a_recipe_from_usfm_and_from_tsv(tmp_path):
    source = _source()
    usfm = write_usfm(tmp_path / "xx.usfm", source)
    tsv = write_tsv(tmp_path / "xx.tsv", _expected(source))  # the same verses as the USFM reads
    heldout = bible_table.heldout_chapters()
    open_chapters = [bc for bc in CHAPTERS if bc not in heldout]
    assert len(open_chapters) == 13 and len(CHAPTERS) - len(open_chapters) == 4
    chapter_text = {bc: " ".join(t for k, t in sorted(_expected(source).items()) if k[:2] == bc) for bc in CHAPTERS}
    indexes = {}
    for path in (usfm, tsv):
        index = indexes[path.suffix] = _prepare(path, tmp_path / path.suffix[1:])
        meta = index["meta"]
        assert meta["language"] == CODE and meta["document"] == "chapter" and meta["recipe"] is None
        assert meta["user_bible"]["path"] == str(path) and meta["sources"] == [str(path)]
        assert meta["user_bible"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert meta["user_bible"]["verses"] == len(_expected(source)) and meta["user_bible"]["chapters"] == 17
        # One document per chapter, held-out chapters in no split; 10% of 17 chapters -> 2 valid ones.
        valid = {tuple(bc) for bc in meta["valid_chapters"]}
        assert len(valid) == 2 and valid <= set(open_chapters)
        assert index["splits"]["valid"]["num_documents"] == 2 and index["splits"]["train"]["num_documents"] == 11
        assert meta["chars"] == {"train": sum(len(chapter_text[bc]) for bc in open_chapters if bc not in valid),
                                 "valid": sum(len(chapter_text[bc]) for bc in valid)}
        assert meta["heldout"]["chapters_in_file"] == 4
    # The same verses make the same dataset, whichever format they came in.
    from ds_minimodel.data import TokenShards

    a, b = TokenShards.open(str(tmp_path / "usfm")), TokenShards.open(str(tmp_path / "tsv"))
    assert (a.tokens("train") == b.tokens("train")).all() and (a.tokens("valid") == b.tokens("valid")).all()
    assert indexes[".usfm"]["meta"]["user_bible"]["verse_ranges_kept_under_first_verse"] == 1


def test_a_whole_bible_file_splits_as_the_recipe_does(tmp_path):
    """The Chichewa Bible written out as TSV is split exactly as recipe bible-ny splits it."""
    ny = bibles.chichewa_verses()
    path = tmp_path / "ny.tsv"
    path.write_text("".join(f"{b}\t{c}\t{v}\t{t}\n" for (b, c, v), t in sorted(ny.items())), encoding="utf-8")
    mine, meta = user_bible.user_bible_recipe(str(path), CODE, valid_fraction=0.01, seed=3)
    theirs, their_meta = bibles.bible_recipe("bible-ny", valid_fraction=0.01, seed=3)
    assert meta["valid_chapters"] == their_meta["valid_chapters"] and meta["heldout"]["chapters"] == \
        their_meta["heldout"]["chapters"]
    for split in ("train", "valid"):
        assert [(d.key[1:], d.segments) for d in mine[split]] == [(d.key[1:], d.segments) for d in theirs[split]]


# --------------------------------------------------------------------------------------------
# Scoring: the registry the tasks read a user language's verses through


def test_registered_language_gets_the_tasks_test_sets_from_its_file(tmp_path):
    source = _source()
    path = write_tsv(tmp_path / "xx.tsv", source)
    with pytest.raises(InvalidValueError, match="language 'xx-test' has no Bible here"):
        bibles.bible_verses(CODE)
    user_bible.register(CODE, str(path))
    assert bibles.bible_verses(CODE) == source and bibles.bible_language(CODE).source == "user"
    # Genre: the English test verses the file has (the four held-out chapters), with the English labels.
    task = bible.verse_genre_task(max_train_per_class=5, max_validation_per_class=2, target_language=CODE)
    english = task.tests["en"]
    kept = [ex for ex in english if tuple(map(int, ex.id.split("."))) in source]
    assert {tuple(map(int, ex.id.split(".")))[:2] for ex in kept} == {(1, 11), (19, 23), (40, 18), (43, 20)}
    test = task.tests[CODE]
    assert [ex.id for ex in test] == [ex.id for ex in kept] and [ex.label for ex in test] == [ex.label for ex in kept]
    assert [ex.text_a for ex in test] == [source[tuple(map(int, ex.id.split(".")))] for ex in kept]
    assert task.meta["target_tests"][CODE] == {"examples": len(kept), "missing": len(english) - len(kept)}
    # Retrieval: the English sample's verses that the file has.
    pairs = bible.verse_retrieval_pairs(max_pairs=None, language=CODE)
    sample_ids = [vid for vid, _ in bible.retrieval_sample(max_pairs=None)]
    assert [p.id for p in pairs] == [vid for vid in sample_ids if tuple(map(int, vid.split("."))) in source]
    assert all(p.target == source[tuple(map(int, p.id.split(".")))] for p in pairs) and len(pairs) > 50


def test_registry_refuses_another_text_under_a_code_and_says_where_a_file_went(tmp_path):
    source = _source()
    path = write_tsv(tmp_path / "xx.tsv", source)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    other = tmp_path / "other.tsv"
    other.write_text("GEN\t1\t1\tZina\n", encoding="utf-8")
    user_bible.register(CODE, str(path))
    user_bible.register(CODE, str(path), sha256=sha, where="language pack P")  # the same text: fine
    with pytest.raises(InvalidValueError, match=f"language pack Q names the Bible file {other}.*another text"):
        user_bible.register_from_pack(CODE, {"path": str(other), "sha256": hashlib.sha256(other.read_bytes())
                                             .hexdigest()}, "Q")
    user_bible.forget()
    user_bible.register_from_pack(CODE, {"path": str(tmp_path / "moved.tsv"), "sha256": sha}, "P")
    with pytest.raises(MissingFileError, match="moved.tsv \\(named by language pack P\\) does not exist: give it "
                                               "with launchers/evaluate.py --bible-file xx-test=PATH"):
        bibles.bible_verses(CODE)
    user_bible.forget()
    user_bible.register_from_pack(CODE, {"path": str(path), "sha256": "0" * 64}, "P")
    with pytest.raises(InvalidValueError, match="has changed since language pack P recorded it"):
        bibles.bible_verses(CODE)
    for bad in ("ny", "en", "sw-cipher", "x y"):
        with pytest.raises(InvalidValueError, match=f"--language '{bad}' is"):
            user_bible.register(bad, str(path))


# --------------------------------------------------------------------------------------------
# End to end: prepare -> adapt -> transfer evaluation, in a fresh registry


def test_prepared_adapted_and_scored(tiny_model_dir, tmp_path, capsys):
    from launchers.evaluate import main as evaluate_main

    source = _source()
    usfm = write_usfm(tmp_path / "xx.usfm", source)
    data = tmp_path / "data"
    _prepare(usfm, data)
    adapt = tmp_path / "adapt"
    run_step("adapt", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={tiny_model_dir}", f"data.path={data}",
             f"train.out_dir={adapt}", f"adapt.language={CODE}", "adapt.init=random")
    pack = json.loads((adapt / "pack" / "pack.json").read_text())
    assert pack["language"] == CODE
    assert pack["provenance"]["user_bible"] == {"path": str(usfm), "format": "usfm",
                                                "sha256": hashlib.sha256(usfm.read_bytes()).hexdigest()}
    # adapt refuses to label the corpus as another language (its index.json says xx-test).
    with pytest.raises(Exception, match="is a xx-test corpus"):
        run_step("adapt", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={tiny_model_dir}", f"data.path={data}",
                 f"train.out_dir={tmp_path / 'adapt-ny'}", "adapt.language=ny")

    ft = tmp_path / "ft"
    run_step("finetune", "tests/fixtures/finetune-tiny.yaml", f"finetune.model_dir={tiny_model_dir}", f"train.out_dir={ft}")
    user_bible.forget()  # nothing registered: the pack alone says where its language's verses are
    out = tmp_path / "transfer.json"
    evaluate_main(["--model", str(ft / "final"), "--pack", str(adapt / "pack"), "--pretrained", str(tiny_model_dir),
                   "--retrieval-pairs", "2000", "--out", str(out)])
    result = json.loads(out.read_text())
    scores = result["classification"]["packs"][str(adapt / "pack")]
    english_ids = result["classification"]["source"]["ids"]
    expected = [i for i in english_ids if tuple(map(int, i.split("."))) in source]
    assert scores["language"] == CODE and scores["ids"] == expected and scores["examples"] == len(expected) > 50
    assert scores["correct"].count("1") / len(expected) == pytest.approx(scores["accuracy"])
    retrieval = result["retrieval"]["packs"][str(adapt / "pack")]
    assert retrieval["language"] == CODE and retrieval["pairs"] == len(bible.verse_retrieval_pairs(
        max_pairs=2000, language=CODE)) > 50

    # The file moved: refused in one line that says how to name it, then scored with --bible-file.
    user_bible.forget()
    moved = tmp_path / "elsewhere.usfm"
    os.rename(usfm, moved)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--model", str(ft / "final"), "--pack", str(adapt / "pack")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--bible-file {CODE}=PATH" in err and err.count("\n") == 1, err
    user_bible.forget()
    out2 = tmp_path / "transfer2.json"
    evaluate_main(["--model", str(ft / "final"), "--pack", str(adapt / "pack"), "--bible-file", f"{CODE}={moved}",
                   "--out", str(out2)])
    again = json.loads(out2.read_text())["classification"]["packs"][str(adapt / "pack")]
    assert again["correct"] == scores["correct"]

