"""Tokenizers of a cipher language (data/cipher.py), and which of their rows have a known answer.

Two tokenizers serve a cipher language:

- `cipher_sentencepiece`: the source's sentencepiece model with the cipher applied to every
  piece. Each ciphered piece keeps its score, so the unigram lattice (or BPE's merges) over a
  ciphered text is the source's lattice over the plain text, letter for letter, and the
  segmentation is the same. Its normal pieces are also shuffled to new ids (a seeded
  permutation; the special pieces keep their ids, which the frozen body binds): a real new
  vocabulary shares no id order with the source, and a plug that forgets the id map then fails
  instead of passing by accident. `segmentation_mismatches` checks the claim on real text.
- a tokenizer trained on the ciphered text with the source's settings (the ordinary
  `train_tokenizer`): the realistic case. `known_rows` finds its rows whose deciphered spelling
  is a source piece.

Either way, `known_rows.json` beside the tokenizer maps target ids to their correct source ids:
for the ciphered source tokenizer every normal row, for a trained one those `known_rows` finds.
A row precision@1 metric reads it with `read_known_rows`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Sequence

from ds_minimodel.data import cipher
from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.sentencepiece import SentencePieceTokenizer

KNOWN_ROWS_FILE = "known_rows.json"
_NORMAL = 1  # sentencepiece ModelProto.SentencePiece.Type.NORMAL; the other types are special


def source_model_path(source: str) -> str:
    """The sentencepiece model of `source`: a dataset or model directory (its tokenizer.model) or
    the model file itself."""
    path = os.path.join(source, "tokenizer.model") if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise MissingFileError(f"source tokenizer {path} does not exist"
                               + (" (the directory has no tokenizer.model)" if os.path.isdir(source) else ""))
    return path


def _read_proto(path: str):
    from sentencepiece import sentencepiece_model_pb2  # ships with sentencepiece

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        data = f.read()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf's DecodeError; a tokenizer.json is not a protobuf at all
        proto = None
    if proto is None or not proto.pieces:
        raise InvalidValueError(f"source tokenizer {path} is not a sentencepiece model: the cipher rewrites "
                                f"sentencepiece pieces (a tokenizer.json is not supported)")
    return proto


def cipher_sentencepiece(source_path: str, out_path: str, seed: int | None = 0) -> list[int]:
    """Write to `out_path` the sentencepiece model at `source_path` with every normal piece
    ciphered and, unless `seed` is None, the normal pieces shuffled to new ids. Returns the id
    map: `id_map[target id] = source id` (a permutation; the identity on special pieces).

    Only NORMAL pieces are ciphered: control pieces (<s>, </s>, <pad>), <unk>, user-defined ones
    (<mask>, matched verbatim in text) and byte pieces (<0x41>) name tokens, not text. The
    normalizer (NFKC by default) is kept: it leaves the Cyrillic targets alone as it leaves
    ASCII letters. A source piece holding a target letter is refused: its cipher would collide.
    """
    proto = _read_proto(source_path)
    cipher.check_plain((p.piece for p in proto.pieces), f"source tokenizer {source_path}")
    normal = [i for i, p in enumerate(proto.pieces) if p.type == _NORMAL]
    order = list(normal)
    if seed is not None:
        random.Random(seed).shuffle(order)
    id_map = list(range(len(proto.pieces)))
    for slot, src in zip(normal, order):
        id_map[slot] = src
    originals = [(p.piece, p.score, p.type) for p in proto.pieces]
    for slot, src in zip(normal, order):
        piece, score, kind = originals[src]
        proto.pieces[slot].piece = cipher.encipher(piece)
        proto.pieces[slot].score = score
        proto.pieces[slot].type = kind
    # Characters the trainer had to keep (training only, but the model should say the truth).
    proto.trainer_spec.required_chars = cipher.encipher(proto.trainer_spec.required_chars)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(proto.SerializeToString())
    tok = SentencePieceTokenizer.load(out_path)
    with open(os.path.splitext(out_path)[0] + ".vocab", "w", encoding="utf-8") as f:  # for reading, as trained ones
        for piece in proto.pieces:
            f.write(f"{piece.piece}\t{piece.score:g}\n")
    assert tok.special_role_ids() == SentencePieceTokenizer.load(source_path).special_role_ids(), \
        "the ciphered model must keep the source's special ids"
    return id_map


def segmentation_mismatches(source: Tokenizer, ciphered: Tokenizer, id_map: Sequence[int],
                            plain_texts: Sequence[str], num_threads: int = 1) -> list[int]:
    """Indices of `plain_texts` where the ciphered tokenizer, on the ciphered text, does not give
    the source's ids (through `id_map`) on the plain text. Empty when the claim holds."""
    texts = list(plain_texts)
    expected = source.encode_batch(texts, num_threads=num_threads)
    got = ciphered.encode_batch([cipher.encipher(t) for t in texts], num_threads=num_threads)
    return [i for i, (e, g) in enumerate(zip(expected, got)) if [id_map[j] for j in g] != e]


def known_rows(target: Tokenizer, source: Tokenizer) -> dict[int, int]:
    """{target id: source id} for the target's non-special pieces whose deciphered spelling is a
    non-special source piece (the special rows are `special_rows`)."""
    rows = {}
    for tid, piece in enumerate(target.pieces()):
        if tid in target.special_ids:
            continue
        sid = source.token_id(cipher.decipher(piece))
        if sid is not None and sid not in source.special_ids:
            rows[tid] = sid
    return rows


def special_rows(target: Tokenizer, source: Tokenizer) -> dict[str, list[int]]:
    """role -> [target id, source id] of the five special tokens."""
    src = source.special_role_ids()
    return {role: [tid, src[role]] for role, tid in target.special_role_ids().items()}


def known_rows_record(target: Tokenizer, source: Tokenizer, rows: dict[int, int], kind: str) -> dict:
    """known_rows.json: the map and what it is a map between. `kind`: "ciphered-source" (every
    normal row known, by construction) or "trained" (a tokenizer trained on the ciphered text)."""
    normal = target.vocab_size - len(target.special_ids)
    return {"kind": kind, "cipher": cipher.describe(),
            "source_tokenizer": {"path": os.path.abspath(source.path), "fingerprint": source.fingerprint(),
                                 "vocab_size": source.vocab_size},
            "target_tokenizer": {"fingerprint": target.fingerprint(), "vocab_size": target.vocab_size},
            "known": len(rows), "of": normal, "special": special_rows(target, source),
            "rows": {str(t): s for t, s in sorted(rows.items())}}


def read_known_rows(data_dir: str | Path, tokenizer: Tokenizer | None = None,
                    source: Tokenizer | None = None) -> dict[int, int]:
    """{target id: source id} from a cipher language's dataset directory; with `tokenizer`, refuse
    a map made for another vocabulary; with `source`, one made onto another source vocabulary
    (its source ids would name other rows)."""
    path = Path(data_dir) / KNOWN_ROWS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: prepare the cipher language with --cipher-tokenizer or "
                               f"--known-rows-from")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        rows = {int(t): int(s) for t, s in record["rows"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidValueError(f"{path} is malformed: {exc}") from None
    if tokenizer is not None and record.get("target_tokenizer", {}).get("fingerprint") != tokenizer.fingerprint():
        raise InvalidValueError(f"{path} maps the rows of tokenizer {record.get('target_tokenizer')}, not of "
                                f"{tokenizer.path} ({tokenizer.fingerprint()})")
    said = record.get("source_tokenizer") or {}
    if source is not None and said.get("fingerprint") != source.fingerprint():
        raise InvalidValueError(f"{path} maps onto source tokenizer {said.get('path')} ({said.get('fingerprint')}), "
                                f"but the model's tokenizer is {source.path} ({source.fingerprint()}): its source "
                                "ids would name other rows")
    return rows
