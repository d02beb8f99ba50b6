"""The interface every tokenizer here has (`Tokenizer`), and what all kinds share."""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from ds_minimodel.errors import InvalidValueError

MASK_PIECE = "<mask>"
ROLES = ("bos", "pad", "eos", "unk", "mask")  # the special tokens every tokenizer here has
WORD_START = "\u2581"  # sentencepiece's word-start marker


class Tokenizer:
    """A loaded tokenizer: a sentencepiece `.model` file or a Hugging Face `tokenizer.json`.

    `tokenizers.load_tokenizer` tells them apart by content, not name (a `tokenizer.json` copied into a
    dataset or model directory is stored as `tokenizer.model`). Both expose the same ids:
    `bos_id`/`eos_id` are `<s>`/`</s>` or BERT's `[CLS]`/`[SEP]`, the tokens the data pipeline
    puts around every sequence.
    """

    path: str
    vocab_size: int
    bos_id: int
    pad_id: int
    eos_id: int
    unk_id: int
    mask_id: int
    # What kind of vocabulary it is (how it marks words): "sentencepiece" (sentencepiece.py); pretrained.py's
    # "wordpiece", "bpe-bytelevel", "unigram-metaspace", "sentencepiece-fairseq", ...
    kind: str = "sentencepiece"
    # Whether the tokenizer lowercases its input: piece matching across vocabularies
    # (copy_shared embedding init) must then lowercase the other side too.
    lowercase: bool = False

    def _set_specials(self, ids: dict[str, int]) -> None:
        for role, i in ids.items():
            if i is None or i < 0:
                raise InvalidValueError(f"tokenizer {self.path} has no {role} token")
            setattr(self, f"{role}_id", int(i))
        self.special_ids: frozenset[int] = frozenset(ids.values())
        self._fingerprint: str | None = None

    def special_role_ids(self) -> dict[str, int]:
        """{"bos", "pad", "eos", "unk", "mask"} -> id."""
        return {role: getattr(self, f"{role}_id") for role in ROLES}

    def token_id(self, token: str) -> int | None:
        """Id of the piece spelled `token` (a special token's name, e.g. "<pad>" or "[PAD]"), or None."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without `<s>`/`</s>` (the data pipeline adds those)."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        raise NotImplementedError

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and each token's [begin, end) *character* span in `text` (extractive QA
        maps answers between characters and tokens with these)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens decode to nothing."""
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        raise NotImplementedError

    def pieces(self) -> list[str]:
        """All pieces in id order: matching pieces across two vocabularies lets one copy the
        embeddings of shared pieces when initialising a new language's embedding matrix."""
        return [self.piece(i) for i in range(self.vocab_size)]

    def word_pieces(self) -> list[str]:
        """`pieces()` in one spelling for every tokenizer, so vocabularies of different kinds can
        be matched: a word-initial piece is the bare word ("lord"), a continuation starts
        with "##" (WordPiece's convention; sentencepiece marks word starts with "▁" instead)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Short sha256 of the model file: identifies the vocabulary in checkpoints and shards."""
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint(self.path)
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


def metaspace_word_pieces(pieces: list[str], marker: str = WORD_START) -> list[str]:
    """`word_pieces` of a vocabulary that marks word starts ("▁word"): the bare word for those,
    "##piece" for the rest (sentencepiece, and Unigram/Metaspace tokenizer.json files)."""
    return [p[len(marker):] if p.startswith(marker) else "##" + p for p in pieces]


def file_fingerprint(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]
