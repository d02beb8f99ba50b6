"""Tokenizers: sentencepiece models trained here, and pretrained models' `tokenizer.json`.

Sentencepiece models trained here put the special tokens where the model expects them:
XLM-R's layout (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4) for our own models and
XLM-R/RoBERTa, BERT's padding id for BERT-family models (`<pad>`=0, `<unk>`=1, `<s>`=2,
`</s>`=3, `<mask>`=4): a new language's vocabulary must pad with the id the frozen body was
trained with. `<mask>` is looked up by name, never assumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError

MASK_PIECE = "<mask>"
WORD_START = "\u2581"  # sentencepiece's word-start marker

# Sentencepiece reads at most this many lines (sampled when the corpus has more): it keeps the
# trainer's memory and time bounded on large corpora; 2M verse- or line-sized sentences is far
# more than a 8k-64k vocabulary needs.
MAX_TRAINING_SENTENCES = 2_000_000
# Lines longer than this (in bytes) are skipped by the trainer; the default (4192) would drop
# long paragraphs without a word.
MAX_SENTENCE_BYTES = 1 << 16


class Tokenizer:
    """A loaded tokenizer: a sentencepiece `.model` file or a Hugging Face `tokenizer.json`.

    `Tokenizer.load` tells them apart by content, not name (a `tokenizer.json` copied into a
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

    @staticmethod
    def load(path: str) -> "Tokenizer":
        if not os.path.isfile(path):
            raise MissingFileError(f"tokenizer model {path} does not exist")
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        # A serialized sentencepiece model is a protobuf (first byte a field tag, never "{").
        return HFTokenizer.load(path) if head.startswith(b"{") else SentencePieceTokenizer.load(path)

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


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str, processor: spm.SentencePieceProcessor):
        self.path = path
        self._sp = processor
        self.vocab_size = processor.get_piece_size()
        mask_id = processor.piece_to_id(MASK_PIECE)
        # piece_to_id answers unk for unknown pieces: a model without <mask> cannot do MLM.
        if mask_id == processor.unk_id():
            raise InvalidValueError(f"tokenizer {path} has no {MASK_PIECE} piece; train it with train_tokenizer()")
        self._set_specials({"bos": processor.bos_id(), "pad": processor.pad_id(), "eos": processor.eos_id(),
                            "unk": processor.unk_id(), "mask": mask_id})

    @classmethod
    def load(cls, path: str) -> "SentencePieceTokenizer":
        sp = spm.SentencePieceProcessor()
        try:
            sp.load(path)
        except (OSError, RuntimeError) as exc:
            raise InvalidValueError(f"tokenizer model {path} is neither a sentencepiece model nor a "
                                    f"tokenizer.json ({exc})") from None
        return cls(path, sp)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """A piece with a leading "▁" spans the whitespace before its word too (sentencepiece's
        surface), so a span's text may start with spaces."""
        return sentencepiece_offsets(self._sp, text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def word_pieces(self) -> list[str]:
        return [p[1:] if p.startswith(WORD_START) else "##" + p for p in self.pieces()]


def sentencepiece_offsets(sp, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character spans of `text` from a sentencepiece processor of any version >= 0.1.99:
    >= 0.2.1 returns character offsets with `out_type="offset_mapping"`; older versions only have
    `out_type="immutable_proto"`, whose offsets are converted to characters when they are bytes."""
    try:
        result = sp.encode(text, out_type="offset_mapping")
        return [int(i) for i in result["ids"]], [(int(b), int(e)) for b, e in result["offsets"]]
    except (ValueError, TypeError, KeyError):
        pass
    proto = sp.encode(text, out_type="immutable_proto")
    ids = [int(p.id) for p in proto.pieces]
    spans = [(int(p.begin), int(p.end)) for p in proto.pieces]
    if any(text[b:e] != p.surface for (b, e), p in zip(spans, proto.pieces)):
        table = _byte_to_char(text)
        spans = [(table[b], table[e]) for b, e in spans]
    return ids, spans


def _byte_to_char(text: str) -> list[int]:
    table = []
    for i, ch in enumerate(text):
        table.extend([i] * len(ch.encode("utf-8")))
    table.append(len(text))
    return table


# Special-token spellings by role, RoBERTa's and BERT's.
_HF_SPECIALS = {"bos": ("<s>", "[CLS]"), "pad": ("<pad>", "[PAD]"), "eos": ("</s>", "[SEP]"),
                "unk": ("<unk>", "[UNK]"), "mask": ("<mask>", "[MASK]")}


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file (WordPiece for BERT-family models, BPE for RoBERTa).

    Used for the source language of a pretrained Hugging Face model; the file's own truncation
    and padding settings are switched off (the data pipeline decides lengths)."""

    def __init__(self, path: str, tok):
        self.path = path
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        vocab = tok.get_vocab(with_added_tokens=True)
        ids = {}
        for role, names in _HF_SPECIALS.items():
            found = [vocab[n] for n in names if n in vocab]
            if not found:
                raise InvalidValueError(f"tokenizer {path} has no {role} token (looked for {' or '.join(names)})")
            ids[role] = found[0]
        self._set_specials(ids)
        spec = json.loads(tok.to_str())
        normalizer = spec.get("normalizer") or {}
        self.lowercase = bool(normalizer.get("lowercase", False)) or normalizer.get("type") == "Lowercase"
        self._continuation = spec["model"].get("continuing_subword_prefix") or ""

    @classmethod
    def load(cls, path: str) -> "HFTokenizer":
        from tokenizers import Tokenizer as RustTokenizer

        try:
            tok = RustTokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises plain Exception for parse errors
            raise InvalidValueError(f"tokenizer {path} is not a valid tokenizer.json ({exc})") from None
        return cls(path, tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [(int(b), int(e)) for b, e in enc.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))

    def word_pieces(self) -> list[str]:
        pieces = self.pieces()
        if self._continuation == "##":
            return pieces
        # Byte-level BPE (RoBERTa): "Ġ" marks a word start, as sentencepiece's "▁" does.
        return [p[1:] if p.startswith("Ġ") else "##" + p for p in pieces]


def file_fingerprint(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _lines(text_files: list[str]) -> Iterator[str]:
    for path in text_files:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        yield line
        except UnicodeDecodeError as exc:
            raise InvalidValueError(f"tokenizer training file {path} is not valid UTF-8 "
                                    f"(byte {exc.start} of a line)") from None


# Special ids by layout; <mask> is the first user-defined piece, right after them.
SPECIAL_LAYOUTS = {"xlmr": {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3},
                   "bert": {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}}


def train_tokenizer(text_files: list[str], out_prefix: str, vocab_size: int,
                    model_type: str = "unigram", seed: int = 0, num_threads: int = 1,
                    character_coverage: float = 0.9999, layout: str = "xlmr") -> Tokenizer:
    """Train a sentencepiece model on `text_files` (one sentence or paragraph per line).

    Writes `out_prefix.model` and `out_prefix.vocab` (piece TAB score, for reading). The model
    bytes are a function of the lines, the arguments and `seed` only, so `fingerprint()` is
    reproducible: the lines go in through an iterator and the model comes out through a writer
    (given file names, sentencepiece would store the input and output paths inside the model);
    the sentence sampling is seeded; with one thread the EM sums run in a fixed order (more
    threads are faster and probably still deterministic for a fixed count, but sentencepiece
    does not promise it).
    """
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise InvalidValueError(f"model_type {model_type!r} is not one of unigram, bpe, char, word")
    if layout not in SPECIAL_LAYOUTS:
        raise InvalidValueError(f"special-token layout {layout!r} is not one of {', '.join(SPECIAL_LAYOUTS)}")
    if vocab_size < 8:
        raise InvalidValueError(f"vocab_size {vocab_size} is too small (needs room for 5 special tokens)")
    if not text_files:
        raise InvalidValueError("train_tokenizer needs at least one text file")
    for path in text_files:
        if not os.path.isfile(path):
            raise MissingFileError(f"tokenizer training file {path} does not exist")
        if os.path.getsize(path) == 0:
            raise InvalidValueError(f"tokenizer training file {path} is empty")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(text_files), model_writer=model,
            vocab_size=vocab_size, model_type=model_type,
            **SPECIAL_LAYOUTS[layout],
            bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            user_defined_symbols=[MASK_PIECE],
            input_sentence_size=MAX_TRAINING_SENTENCES, shuffle_input_sentence=True,
            max_sentence_length=MAX_SENTENCE_BYTES, character_coverage=character_coverage,
            num_threads=num_threads,
            # Errors only: its progress log is hundreds of lines. (Not `logstream`: that needs
            # sys.stderr to have a file descriptor, which pytest's capture does not.)
            minloglevel=2)
    except RuntimeError as exc:
        # Typically "Vocabulary size too high" on a small corpus: a user problem, not a bug.
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise UserError(f"sentencepiece training on {', '.join(text_files)} with vocab_size "
                        f"{vocab_size} failed: {msg}") from None
    out_dir = os.path.dirname(os.path.abspath(out_prefix))
    os.makedirs(out_dir, exist_ok=True)
    with open(out_prefix + ".model", "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    with open(out_prefix + ".vocab", "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n")
    return Tokenizer.load(out_prefix + ".model")
