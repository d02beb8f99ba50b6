"""The text -> tokenizer -> shards pipeline, over any source of documents.

Sources of documents:
- a Bible recipe, `bible-<code>` (bibles.py: the verse text of every language of the table, and
  the recipes made of it, held-out chapters left out of every split);
- a user's own verse-aligned Bible (user_bible.py);
- plain UTF-8 text files (one document per non-empty line) or a Hugging Face `datasets`
  dataset saved with `save_to_disk` (one document per row).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from typing import Callable, Iterator, Mapping

from ds_minimodel.data import cipher_prep
from ds_minimodel.data.bible_table import Document
from ds_minimodel.data.bibles import BIBLE_RECIPES, BIBLE_SUBSETS, bible_recipe, bible_verses
from ds_minimodel.data.shards import write_shards
from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.staged_dir import check_empty_or_overwrite
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

_SPACES = re.compile(r"\s+")


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
