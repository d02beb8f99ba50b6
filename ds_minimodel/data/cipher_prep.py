"""prepare_dataset's two cipher-language options (data/cipher_vocab.py does the work):

- `--cipher-tokenizer SOURCE`: tokenize with SOURCE's sentencepiece model ciphered
  (`ciphered_source_tokenizer`). Before any shard is written, every verse of the recipe (all
  splits) and every verse of the language's task text (the test verses among them) is checked
  to segment as the source segments its plain text; one mismatch is a user error, since the
  premise of this tokenizer, that every row has a known correct row, would then be false.
- `--known-rows-from SOURCE`, beside a tokenizer trained on the ciphered text (`--vocab-size`):
  the rows whose deciphered spelling is a SOURCE piece (`trained_known_rows`).

Both write known_rows.json into the dataset directory and say what they did in index.json's
meta.tokenizer.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

from ds_minimodel.data import cipher
from ds_minimodel.data.cipher_vocab import (
    KNOWN_ROWS_FILE,
    cipher_sentencepiece,
    known_rows,
    known_rows_record,
    segmentation_mismatches,
    source_model_path,
)
from ds_minimodel.errors import UserError
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer


def check_cipher_recipe(language: str | None, option: str, source: str) -> None:
    """The cipher options need a cipher language's recipe (`bible-<code>-cipher`) and a source
    tokenizer that exists (checked before the slow part)."""
    if not language or not cipher.is_cipher_code(language):
        raise UserError(f"{option} is for a cipher language's recipe (--recipe bible-<code>{cipher.CIPHER_SUFFIX}, "
                        f"e.g. bible-en{cipher.CIPHER_SUFFIX}); this corpus is "
                        f"{'of language ' + repr(language) if language else 'not a Bible recipe'}")
    source_model_path(source)


def ciphered_source_tokenizer(source: str, tmp: str, verses: Iterable[str], seed: int, num_threads: int,
                              log: Callable[[str], None]) -> tuple[Tokenizer, dict, dict[str, str]]:
    """(the ciphered source tokenizer, written under `tmp`; index.json's meta.tokenizer; the extra
    files) after checking that it segments every ciphered verse of `verses` as the source
    segments the plain verse."""
    source_tok = load_tokenizer(source_model_path(source))
    path = os.path.join(tmp, "tokenizer.model")
    id_map = cipher_sentencepiece(source_tok.path, path, seed=seed)
    tok = load_tokenizer(path)
    plain = [cipher.decipher(v) for v in verses]
    mismatches = segmentation_mismatches(source_tok, tok, id_map, plain, num_threads=num_threads)
    log(f"ciphered {source_tok.path}: {len(mismatches)} of {len(plain):,} verses segment differently from the source")
    if mismatches:
        first = plain[mismatches[0]]
        raise UserError(f"the ciphered tokenizer of {source_tok.path} segments {len(mismatches)} of {len(plain)} "
                        f"verses differently from the source, e.g. {first[:80]!r}: its rows would not all have a "
                        f"known source row")
    rows = {t: s for t, s in enumerate(id_map) if t not in tok.special_ids}
    meta = {"trained": False, "ciphered_from": os.path.abspath(source_tok.path),
            "source_fingerprint": source_tok.fingerprint(), "permutation_seed": seed,
            "segmentation_check": {"verses": len(plain), "mismatches": 0}, "known_rows": len(rows)}
    record = known_rows_record(tok, source_tok, rows, "ciphered-source")
    return tok, meta, {KNOWN_ROWS_FILE: json.dumps(record, indent=1, ensure_ascii=False) + "\n"}


def trained_known_rows(tok: Tokenizer, source: str, log: Callable[[str], None]) -> tuple[dict, dict[str, str]]:
    """(meta.tokenizer's additions, the extra files) for a tokenizer trained on ciphered text."""
    source_tok = load_tokenizer(source_model_path(source))
    rows = known_rows(tok, source_tok)
    normal = tok.vocab_size - len(tok.special_ids)
    log(f"known rows: {len(rows):,} of {normal:,} pieces decipher to a piece of {source_tok.path}")
    record = known_rows_record(tok, source_tok, rows, "trained")
    return ({"known_rows": len(rows), "known_rows_source": os.path.abspath(source_tok.path),
             "source_fingerprint": source_tok.fingerprint()},
            {KNOWN_ROWS_FILE: json.dumps(record, indent=1, ensure_ascii=False) + "\n"})
