"""Sentencepiece tokenizers with XLM-R's special-token layout.

The special ids match XLM-R (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3) so a model, its
embedding matrix and the data pipeline agree on them whatever the vocabulary. `<mask>` is a
user-defined piece (id 4 in models trained here); it is looked up by name, never assumed.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError

MASK_PIECE = "<mask>"

# Sentencepiece reads at most this many lines (sampled when the corpus has more): it keeps the
# trainer's memory and time bounded on large corpora; 2M verse- or line-sized sentences is far
# more than a 8k-64k vocabulary needs.
MAX_TRAINING_SENTENCES = 2_000_000
# Lines longer than this (in bytes) are skipped by the trainer; the default (4192) would drop
# long paragraphs without a word.
MAX_SENTENCE_BYTES = 1 << 16


class Tokenizer:
    """A loaded sentencepiece `.model` file."""

    def __init__(self, path: str, processor: spm.SentencePieceProcessor):
        self.path = path
        self._sp = processor
        self.vocab_size: int = processor.get_piece_size()
        self.bos_id: int = processor.bos_id()
        self.pad_id: int = processor.pad_id()
        self.eos_id: int = processor.eos_id()
        self.unk_id: int = processor.unk_id()
        mask_id = processor.piece_to_id(MASK_PIECE)
        # piece_to_id answers unk for unknown pieces: a model without <mask> cannot do MLM.
        if mask_id == self.unk_id:
            raise InvalidValueError(f"tokenizer {path} has no {MASK_PIECE} piece; train it with train_tokenizer()")
        self.mask_id: int = mask_id
        for name in ("bos_id", "pad_id", "eos_id", "unk_id"):
            if getattr(self, name) < 0:
                raise InvalidValueError(f"tokenizer {path} has no {name[:-3]} token (id -1)")
        self.special_ids: frozenset[int] = frozenset(
            {self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id})
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        if not os.path.isfile(path):
            raise MissingFileError(f"tokenizer model {path} does not exist")
        sp = spm.SentencePieceProcessor()
        try:
            sp.load(path)
        except (OSError, RuntimeError) as exc:
            raise InvalidValueError(f"tokenizer model {path} is not a sentencepiece model ({exc})") from None
        return cls(path, sp)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without `<s>`/`</s>` (the data pipeline adds those)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control tokens (`<s>`, `<pad>`, `</s>`) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def pieces(self) -> list[str]:
        """All pieces in id order: matching pieces across two vocabularies lets one copy the
        embeddings of shared pieces when initialising a new language's embedding matrix."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def fingerprint(self) -> str:
        """Short sha256 of the model file: identifies the vocabulary in checkpoints and shards."""
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint(self.path)
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


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


def train_tokenizer(text_files: list[str], out_prefix: str, vocab_size: int,
                    model_type: str = "unigram", seed: int = 0, num_threads: int = 1,
                    character_coverage: float = 0.9999) -> Tokenizer:
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
            # XLM-R's layout; <mask> right after the four specials.
            bos_id=0, pad_id=1, eos_id=2, unk_id=3,
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
