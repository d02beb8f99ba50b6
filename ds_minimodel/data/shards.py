"""Packed token shards: one flat memmap per split, plus `index.json` and the tokenizer.

Layout of a dataset directory:

    index.json        format, tokenizer fingerprint, special ids, splits, provenance (meta)
    tokenizer.model   the sentencepiece model the ids refer to (copied, so the data is
                      self-contained)
    <split>.bin       all documents of the split, each followed by `</s>`, as one flat array

One flat array per split (rather than many shard files) because the loader packs sequences
across document boundaries anyway (RoBERTa's FULL-SENTENCES), so it only ever needs offsets
into one token stream, and a memmap lets every rank read it without loading it. The corpora
this toolkit targets for adaptation (a Bible, a Wikipedia slice) are at most a few GB of ids.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterable, Mapping

import numpy as np

from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.staged_dir import check_empty_or_overwrite, staged_dir
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer, file_fingerprint

FORMAT = 1
INDEX = "index.json"
TOKENIZER_FILE = "tokenizer.model"
# Documents are buffered and written in chunks of about this many ids: bounded memory on large
# corpora, few write calls on small ones.
_WRITE_CHUNK = 1 << 20


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    # uint16 halves the disk and page-cache footprint for every vocabulary up to 64k pieces.
    return np.dtype(np.uint16 if vocab_size < 65535 else np.uint32)


def write_shards(out_dir: str, splits: dict[str, Iterable[list[int]]], tokenizer_path: str,
                 meta: dict, overwrite: bool = False, extra_files: Mapping[str, str] | None = None) -> dict:
    """Write `splits` (name -> stream of documents, each a list of ids without specials) to
    `out_dir` and return the index. `extra_files`: file name -> text written beside them (a
    cipher language's known_rows.json), in the same staged write.

    Everything is written into a staging directory that replaces `out_dir` only at the end
    (`staged_dir`), so a crash or a bad document never leaves a half-written dataset there.
    """
    check_empty_or_overwrite(out_dir, overwrite)
    tok = load_tokenizer(tokenizer_path)
    dtype = dtype_for_vocab(tok.vocab_size)
    with staged_dir(out_dir) as tmp:
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        vocab_file = os.path.splitext(tokenizer_path)[0] + ".vocab"
        if os.path.isfile(vocab_file):
            shutil.copyfile(vocab_file, tmp / "tokenizer.vocab")
        split_index = {}
        for name, docs in splits.items():
            split_index[name] = _write_split(str(tmp / f"{name}.bin"), name, docs, tok, dtype)
        index = {
            "format": FORMAT,
            "tokenizer": TOKENIZER_FILE,
            "tokenizer_fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
            "special": {"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id,
                        "unk": tok.unk_id, "mask": tok.mask_id},
            "splits": split_index,
            "meta": meta,
        }
        with open(tmp / INDEX, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=False)
            f.write("\n")
    return index


def _write_split(path: str, name: str, docs: Iterable[list[int]], tok: Tokenizer, dtype: np.dtype) -> dict:
    num_tokens = num_docs = 0
    buf: list[int] = []
    with open(path, "wb") as f:
        for doc in docs:
            if not len(doc):
                continue  # an empty document would only add a stray </s>
            buf.extend(doc)
            buf.append(tok.eos_id)  # </s> ends every document: the separator the loader sees
            num_docs += 1
            if len(buf) >= _WRITE_CHUNK:
                num_tokens += _flush(f, buf, dtype, tok.vocab_size, path)
                buf = []
        num_tokens += _flush(f, buf, dtype, tok.vocab_size, path)
    if num_tokens == 0:
        raise InvalidValueError(f"split '{name}' written to {path} has no tokens (no non-empty documents)")
    return {"file": os.path.basename(path), "dtype": dtype.name,
            "num_tokens": num_tokens, "num_documents": num_docs}


def _flush(f, buf: list[int], dtype: np.dtype, vocab_size: int, path: str) -> int:
    if not buf:
        return 0
    arr = np.asarray(buf, dtype=np.int64)
    # Ids from another vocabulary would be silently wrapped by the cast: catch them here.
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise InvalidValueError(f"token id {int(arr.max()) if arr.max() >= vocab_size else int(arr.min())} "
                                f"written to {path} is outside the tokenizer's vocabulary of {vocab_size}")
    arr.astype(dtype).tofile(f)
    return len(arr)


class TokenShards:
    """A dataset directory written by `write_shards`, validated on open."""

    def __init__(self, path: str, index: dict):
        self.path = path
        self.index = index
        self._tokenizer: Tokenizer | None = None
        self._memmaps: dict[str, np.memmap] = {}

    @classmethod
    def open(cls, path: str) -> "TokenShards":
        if not os.path.isdir(path):
            raise MissingFileError(f"dataset directory {path} does not exist")
        index_path = os.path.join(path, INDEX)
        if not os.path.isfile(index_path):
            raise MissingFileError(f"{path} has no {INDEX}: not a dataset written by launchers/prepare_data.py")
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidValueError(f"{index_path} is not valid JSON ({exc})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            got = index.get("format") if isinstance(index, dict) else None
            raise InvalidValueError(f"{index_path} has format {got!r}; this version reads format {FORMAT}")
        for key in ("tokenizer", "tokenizer_fingerprint", "vocab_size", "special", "splits"):
            if key not in index:
                raise InvalidValueError(f"{index_path} has no key '{key}'")
        tok_path = os.path.join(path, index["tokenizer"])
        if not os.path.isfile(tok_path):
            raise MissingFileError(f"tokenizer {tok_path} named in {index_path} does not exist")
        if file_fingerprint(tok_path) != index["tokenizer_fingerprint"]:
            raise InvalidValueError(f"tokenizer {tok_path} does not match the fingerprint in {index_path}: "
                                    f"the ids were made by another tokenizer")
        if not index["splits"]:
            raise InvalidValueError(f"{index_path} lists no splits")
        for name, info in index["splits"].items():
            bin_path = os.path.join(path, info["file"])
            if info.get("num_tokens", 0) <= 0:
                raise InvalidValueError(f"split '{name}' in {path} is empty")
            if not os.path.isfile(bin_path):
                raise MissingFileError(f"split '{name}' file {bin_path} does not exist")
            itemsize = np.dtype(info["dtype"]).itemsize
            expected = info["num_tokens"] * itemsize
            actual = os.path.getsize(bin_path)
            if actual != expected:
                raise InvalidValueError(f"split '{name}' file {bin_path} has {actual} bytes, expected {expected} "
                                        f"({info['num_tokens']} tokens of {info['dtype']}): truncated or corrupt")
        return cls(path, index)

    @property
    def splits(self) -> list[str]:
        return list(self.index["splits"])

    @property
    def vocab_size(self) -> int:
        return self.index["vocab_size"]

    def split_info(self, split: str) -> dict:
        if split not in self.index["splits"]:
            raise InvalidValueError(f"split '{split}' is not in {self.path} (it has: {', '.join(self.splits)})")
        return self.index["splits"][split]

    def num_tokens(self, split: str) -> int:
        return self.split_info(split)["num_tokens"]

    def tokens(self, split: str) -> np.memmap:
        """The split's whole token stream, read-only and lazily paged in."""
        if split not in self._memmaps:
            info = self.split_info(split)
            self._memmaps[split] = np.memmap(os.path.join(self.path, info["file"]), dtype=info["dtype"],
                                             mode="r", shape=(info["num_tokens"],))
        return self._memmaps[split]

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(os.path.join(self.path, self.index["tokenizer"]))
        return self._tokenizer

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.index["special"].values())

    def fingerprint(self) -> str:
        """Identifies the data a loader position refers to (tokenizer + split sizes)."""
        sizes = ",".join(f"{k}:{v['num_tokens']}" for k, v in sorted(self.index["splits"].items()))
        return f"{self.index['tokenizer_fingerprint']}/{sizes}"

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v['num_tokens']}" for k, v in self.index["splits"].items())
        return f"TokenShards({self.path!r}, vocab={self.vocab_size}, {sizes})"
