"""The tokenizers pretrained checkpoints ship, behind `base.Tokenizer`'s interface.

* `HFTokenizer`: a Hugging Face `tokenizer.json` of any model kind an XLM-R-family or BERT-family
  checkpoint uses: WordPiece (BERT, "##" continuations), byte-level BPE (RoBERTa, "Ġ" for a
  leading space, every byte spelt as a printable character), Unigram with a Metaspace
  pre-tokenizer (XLM-R, multilingual-e5, multilingual MiniLM: "▁" starts a word), and BPE with
  a Metaspace pre-tokenizer.
* `XLMRSentencePieceTokenizer`: XLM-R's slow-tokenizer file, `sentencepiece.bpe.model`, with
  fairseq's ids, exactly as transformers' XLMRobertaTokenizer numbers them.

Both give `word_pieces()` in the one spelling copy_shared matches vocabularies by (a word-initial
piece is the bare word, a continuation "##piece"), whatever the kind.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from ds_minimodel.errors import InvalidValueError
from ds_minimodel.tokenizers.base import (
    MASK_PIECE,
    WORD_START,
    Tokenizer,
    metaspace_word_pieces,
)
from ds_minimodel.tokenizers.sentencepiece import sentencepiece_offsets

# Special-token spellings by role, RoBERTa's / XLM-R's and BERT's.
_HF_SPECIALS = {"bos": ("<s>", "[CLS]"), "pad": ("<pad>", "[PAD]"), "eos": ("</s>", "[SEP]"),
                "unk": ("<unk>", "[UNK]"), "mask": ("<mask>", "[MASK]")}


def _flatten(component: dict | None, key: str) -> list[dict]:
    """A normalizer or pre-tokenizer and, for a Sequence, its parts (recursively)."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [c for part in component.get(key, []) for c in _flatten(part, key)]
    return [component]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as one printable character (a space is "Ġ")."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


_BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


def bytelevel_word_pieces(pieces: list[str]) -> list[str]:
    """`word_pieces` of a byte-level BPE vocabulary: each piece's bytes decoded to text, a leading
    space marking a word start. A piece that is not whole UTF-8 characters (part of a multi-byte
    character) or not in the byte alphabet gets a spelling that matches nothing ("\\0" + piece)."""
    out = []
    for p in pieces:
        try:
            text = bytes(_BYTE_OF[c] for c in p).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            out.append("\0" + p)
            continue
        out.append(text[1:] if text.startswith(" ") else "##" + text)
    return out


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file, for the source language of a pretrained model.

    The file's own truncation and padding settings are switched off (the data pipeline decides
    lengths). `kind` names its model and how it marks words: "wordpiece", "bpe-bytelevel",
    "unigram-metaspace", "bpe-metaspace"; any other kind encodes and decodes but cannot be
    matched against another vocabulary (`word_pieces` refuses it)."""

    def __init__(self, path: str, tok):
        self.path = path
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = {}
        for role, names in _HF_SPECIALS.items():
            found = [i for i in map(tok.token_to_id, names) if i is not None]
            if not found:
                raise InvalidValueError(f"tokenizer {path} has no {role} token (looked for {' or '.join(names)})")
            ids[role] = found[0]
        self._set_specials(ids)
        # The components' own JSON, not the whole file's (a 250k-piece vocabulary takes seconds to parse).
        normalizers = _flatten(_spec(tok.normalizer), "normalizers")
        self.lowercase = any(n.get("type") == "Lowercase" or (n.get("type") == "BertNormalizer" and n.get("lowercase"))
                             for n in normalizers)
        self.kind, self._marker = _kind(tok.model, _spec(tok.pre_tokenizer), _spec(tok.decoder))

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

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def word_pieces(self) -> list[str]:
        pieces = self.pieces()
        if self.kind == "wordpiece":
            m = self._marker
            return pieces if m == "##" else ["##" + p[len(m):] if p.startswith(m) else p for p in pieces]
        if self.kind == "bpe-bytelevel":
            return bytelevel_word_pieces(pieces)
        if self.kind.endswith("-metaspace"):
            return metaspace_word_pieces(pieces, self._marker)
        raise InvalidValueError(f"tokenizer {self.path} is a {self.kind} tokenizer.json: its pieces cannot be "
                                "matched against another vocabulary (use adapt.init=random)")


def _spec(component) -> dict | None:
    return json.loads(component.__getstate__()) if component is not None else None


def _kind(model, pre_tokenizer: dict | None, decoder: dict | None) -> tuple[str, str]:
    """(kind, marker): WordPiece's continuation prefix, or the Metaspace word-start character."""
    mtype = type(model).__name__  # tokenizers.models.WordPiece, BPE, Unigram, WordLevel
    if mtype == "WordPiece":
        return "wordpiece", model.continuing_subword_prefix or "##"
    parts = _flatten(pre_tokenizer, "pretokenizers") + _flatten(decoder, "decoders")
    if mtype == "BPE" and any(p.get("type") == "ByteLevel" for p in parts):
        return "bpe-bytelevel", "Ġ"
    meta = next((p for p in parts if p.get("type") == "Metaspace"), None)
    if mtype in ("Unigram", "BPE") and meta is not None:
        return f"{mtype.lower()}-metaspace", meta.get("replacement") or WORD_START
    return mtype.lower(), ""


class XLMRSentencePieceTokenizer(Tokenizer):
    """XLM-R's `sentencepiece.bpe.model` with fairseq's ids (transformers' XLMRobertaTokenizer):
    <s> 0, <pad> 1, </s> 2, <unk> 3, then the model's pieces from its id 3 on, shifted by one
    (its own ids 0-2, <unk> <s> </s>, are replaced by those four), and <mask> last."""

    FAIRSEQ = ("<s>", "<pad>", "</s>", "<unk>")
    OFFSET = 1

    @staticmethod
    def fits(sp) -> bool:
        """Whether a sentencepiece model has XLM-R's own special ids (fairseq's training defaults)."""
        return (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1) and sp.get_piece_size() > 3

    def __init__(self, path: str, sp):
        self.path = path
        self._sp = sp
        n = sp.get_piece_size()
        self.vocab_size = n + self.OFFSET + 1
        self.kind = "sentencepiece-fairseq"
        self._set_specials({"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": n + self.OFFSET})

    def _ids(self, spm_ids: Iterable[int]) -> list[int]:
        return [int(i) + self.OFFSET if i else self.unk_id for i in spm_ids]

    def encode(self, text: str) -> list[int]:
        return self._ids(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [self._ids(ids) for ids in self._sp.encode(list(texts), out_type=int, num_threads=num_threads)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, spans = sentencepiece_offsets(self._sp, text)
        return self._ids(ids), spans

    def decode(self, ids: Iterable[int]) -> str:
        # Special tokens (<unk> too, as transformers' skip_special_tokens) decode to nothing.
        return self._sp.decode([int(i) - self.OFFSET for i in ids if int(i) not in self.special_ids])

    def piece(self, token_id: int) -> str:
        i = int(token_id)
        if i < len(self.FAIRSEQ):
            return self.FAIRSEQ[i]
        return MASK_PIECE if i == self.mask_id else self._sp.id_to_piece(i - self.OFFSET)

    def token_id(self, token: str) -> int | None:
        if token in self.FAIRSEQ:
            return self.FAIRSEQ.index(token)
        if token == MASK_PIECE:
            return self.mask_id
        j = self._sp.piece_to_id(token)
        return j + self.OFFSET if j >= len(self.FAIRSEQ) - 1 else None

    def word_pieces(self) -> list[str]:
        return metaspace_word_pieces(self.pieces())
