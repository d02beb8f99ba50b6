"""Sentencepiece models trained here (`train_tokenizer`) and read back (`SentencePieceTokenizer`).

Sentencepiece models trained here put the special tokens where the model expects them: a new
language's vocabulary must pad with the id the frozen body was trained with. The layout follows
the model's own special ids (`layout_for_special_ids`): XLM-R's (`<s>`=0, `<pad>`=1, `</s>`=2,
`<unk>`=3, `<mask>`=4) for our own models and every XLM-R/RoBERTa-vocabulary checkpoint, whatever
its architecture; BERT's padding id for WordPiece BERT checkpoints (`<pad>`=0, `<unk>`=1, `<s>`=2,
`</s>`=3, `<mask>`=4). `<mask>` is looked up by name, never assumed.
"""


from __future__ import annotations

import io
import os
from typing import Iterable, Iterator, Mapping, Sequence

import sentencepiece as spm

from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.tokenizers.base import (
    MASK_PIECE,
    ROLES,
    Tokenizer,
    metaspace_word_pieces,
)

# Sentencepiece reads at most this many lines (sampled when the corpus has more): it keeps the
# trainer's memory and time bounded on large corpora; 2M verse- or line-sized sentences is far
# more than a 8k-64k vocabulary needs.
MAX_TRAINING_SENTENCES = 2_000_000
# Lines longer than this (in bytes) are skipped by the trainer; the default (4192) would drop
# long paragraphs without a word.
MAX_SENTENCE_BYTES = 1 << 16


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
        return cls(path, load_processor(path))

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

    def token_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    def word_pieces(self) -> list[str]:
        return metaspace_word_pieces(self.pieces())


def load_processor(path: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(path)
    except (OSError, RuntimeError) as exc:
        raise InvalidValueError(f"tokenizer model {path} is neither a sentencepiece model nor a "
                                f"tokenizer.json ({exc})") from None
    return sp


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


# Special ids by layout; <mask> is the first user-defined piece, at the lowest id they leave free.
SPECIAL_LAYOUTS = {"xlmr": {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3},
                   "bert": {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}}


def layout_for_special_ids(ids: Mapping[str, int]) -> tuple[str, dict[str, int]]:
    """(name, {"bos_id", "pad_id", "eos_id", "unk_id"}) of a new vocabulary for a model whose
    tokenizer has these special ids (role -> id, the five of ROLES).

    The five special pieces take ids 0..4 in the order of the model's own ids, which keeps the id
    the frozen body binds, its pad (its padding row; RoBERTa positions count from it), wherever a
    checkpoint puts it among its first five: XLM-R's vocabulary (<s> 0 <pad> 1 </s> 2 <unk> 3,
    <mask> last) gives XLM-R's layout whatever the architecture around it; BERT's WordPiece
    ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103) gives BERT's. A pad id beyond them keeps
    its own id and the other four take 0..3 in that order. The name is "xlmr" or "bert" when the
    result is one of SPECIAL_LAYOUTS, else it spells the ids.
    """
    missing = [r for r in ROLES if r not in ids]
    if missing:
        raise InvalidValueError(f"special ids {dict(ids)} lack {', '.join(missing)}")
    if len({int(ids[r]) for r in ROLES}) != len(ROLES):
        raise InvalidValueError(f"special ids {dict(ids)} are not distinct: a vocabulary needs five special pieces")
    order = sorted(ROLES, key=lambda r: (int(ids[r]), ROLES.index(r)))
    new = {r: i for i, r in enumerate(order)}
    if new["pad"] != ids["pad"]:
        new = {r: i for i, r in enumerate(r for r in order if r != "pad")}
        new["pad"] = int(ids["pad"])
    layout = {f"{r}_id": new[r] for r in ROLES if r != "mask"}
    name = next((n for n, known in SPECIAL_LAYOUTS.items() if known == layout), None)
    return name or "ids-" + "-".join(f"{r}{new[r]}" for r in ROLES if r != "mask"), layout


def _resolve_layout(layout: str | Mapping[str, int]) -> dict[str, int]:
    if isinstance(layout, str):
        if layout not in SPECIAL_LAYOUTS:
            raise InvalidValueError(f"special-token layout {layout!r} is not one of {', '.join(SPECIAL_LAYOUTS)}")
        return dict(SPECIAL_LAYOUTS[layout])
    keys = {"bos_id", "pad_id", "eos_id", "unk_id"}
    if set(layout) != keys or len(set(layout.values())) != 4 or min(layout.values()) < 0:
        raise InvalidValueError(f"special-token layout {dict(layout)} needs four distinct ids >= 0 for "
                                f"{', '.join(sorted(keys))}")
    return {k: int(v) for k, v in layout.items()}


def train_tokenizer(text_files: list[str], out_prefix: str, vocab_size: int,
                    model_type: str = "unigram", seed: int = 0, num_threads: int = 1,
                    character_coverage: float = 0.9999, layout: str | Mapping[str, int] = "xlmr",
                    vocab_limit: str = "hard") -> Tokenizer:
    """Train a sentencepiece model on `text_files` (one sentence or paragraph per line).

    Writes `out_prefix.model` and `out_prefix.vocab` (piece TAB score, for reading). The model
    bytes are a function of the lines, the arguments and `seed` only, so `fingerprint()` is
    reproducible: the lines go in through an iterator and the model comes out through a writer
    (given file names, sentencepiece would store the input and output paths inside the model);
    the sentence sampling is seeded; with one thread the EM sums run in a fixed order (more
    threads are faster and probably still deterministic for a fixed count, but sentencepiece
    does not promise it). `layout` is a name of SPECIAL_LAYOUTS or the ids themselves
    (`layout_for_special_ids`). `vocab_limit`: "hard" (exactly `vocab_size` pieces, else a user
    error) or "soft" (at most that many: a corpus with fewer distinct pieces, e.g. Vietnamese's
    short space-separated syllables, gets what it has).
    """
    if vocab_limit not in ("hard", "soft"):
        raise InvalidValueError(f"vocab_limit {vocab_limit!r} is not one of hard, soft")
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise InvalidValueError(f"model_type {model_type!r} is not one of unigram, bpe, char, word")
    ids = _resolve_layout(layout)
    if vocab_size < 8:
        raise InvalidValueError(f"vocab_size {vocab_size} is too small (needs room for 5 special tokens)")
    if max(ids.values()) >= vocab_size:
        raise InvalidValueError(f"special-token layout {ids} does not fit vocab_size {vocab_size}")
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
            **ids,
            bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            user_defined_symbols=[MASK_PIECE],
            input_sentence_size=MAX_TRAINING_SENTENCES, shuffle_input_sentence=True,
            max_sentence_length=MAX_SENTENCE_BYTES, character_coverage=character_coverage,
            num_threads=num_threads, hard_vocab_limit=vocab_limit == "hard",
            # Errors only: its progress log is hundreds of lines. (Not `logstream`: that needs
            # sys.stderr to have a file descriptor, which pytest's capture does not.)
            minloglevel=2)
    except RuntimeError as exc:
        # Typically "Vocabulary size too high" on a small corpus: a user problem, not a bug.
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        hint = " (or let the vocabulary be smaller: --vocab-limit soft)" if "too high" in msg else ""
        raise UserError(f"sentencepiece training on {', '.join(text_files)} with vocab_size "
                        f"{vocab_size} failed: {msg}{hint}") from None
    out_dir = os.path.dirname(os.path.abspath(out_prefix))
    os.makedirs(out_dir, exist_ok=True)
    with open(out_prefix + ".model", "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    with open(out_prefix + ".vocab", "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n")
    return SentencePieceTokenizer.load(out_prefix + ".model")
