"""The unigram baseline of a dataset: how well an MLM does that ignores its context.

A masked position is chosen uniformly among the non-special tokens (data/masking.py), so a model
that has learned nothing but token frequencies predicts every masked token with the train
split's unigram distribution, and its expected MLM loss is the cross-entropy of the validation
tokens under it:

    H = -(1 / N) * sum over non-special validation tokens t of log p_train(t)

with p_train add-one smoothed over the non-special vocabulary (a token the train split never
holds still gets a finite loss, as a trained softmax would give it). A body has learned to use
context only as far as its validation MLM loss lies below H; studies are gated on that distance.

Nats per token move with the vocabulary (a bigger vocabulary has longer, rarer tokens), so the
distance is also given in bits per character: nats per token x tokens per character / ln 2,
the characters counted on the split's decoded text.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ds_minimodel.data.shards import TokenShards


@dataclass(frozen=True)
class UnigramBaseline:
    nats_per_token: float  # cross-entropy of the split's non-special tokens under train frequencies
    tokens: int  # non-special tokens of the split
    chars: int  # characters of the split's decoded text (documents joined, specials dropped)
    split: str

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens

    def bits_per_char(self, nats_per_token: float) -> float:
        """A per-token loss (this baseline's or a model's on the same split) in bits per character."""
        return nats_per_token / self.chars_per_token / math.log(2)

    def distance(self, loss: float) -> dict:
        """How far below this baseline a model's loss on the same split lies, in both units."""
        nats = self.nats_per_token - loss
        return {"nats_per_token": nats, "bits_per_char": self.bits_per_char(nats)}

    def as_dict(self) -> dict:
        return {**asdict(self), "bits_per_char": self.bits_per_char(self.nats_per_token)}


def _counts(tokens: np.ndarray, vocab_size: int, special: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    counts[special] = 0.0
    return counts


def unigram_baseline(data_path: str, split: str = "valid") -> UnigramBaseline:
    """The unigram cross-entropy of `split` under the train split's frequencies (module docstring)."""
    shards = TokenShards.open(data_path)
    vocab = shards.vocab_size
    special = np.array(sorted(i for i in shards.special_ids if i < vocab), dtype=np.int64)
    train = _counts(shards.tokens("train"), vocab, special)
    evaluated = _counts(shards.tokens(split), vocab, special)
    regular = np.ones(vocab, dtype=bool)
    regular[special] = False
    smoothed = (train + 1.0) * regular
    log_p = np.log(np.where(regular, smoothed, 1.0) / smoothed.sum())
    n = int(evaluated.sum())
    nats = float(-(evaluated * log_p).sum() / n)
    return UnigramBaseline(nats, n, _decoded_chars(shards, split, special), split)


def _decoded_chars(shards: TokenShards, split: str, special: np.ndarray) -> int:
    """Characters of the split's text: each document (the ids between separators) decoded alone,
    so the count is that of the text the tokenizer was given, without the special tokens."""
    ids = np.asarray(shards.tokens(split), dtype=np.int64)
    tok = shards.tokenizer()
    bounds = np.flatnonzero(np.isin(ids, special))
    chars, start = 0, 0
    for end in list(bounds) + [len(ids)]:
        if end > start:
            chars += len(tok.decode(ids[start:end].tolist()))
        start = end + 1
    return chars
