"""Text -> tokenizer -> packed token shards (a dataset directory for training).

    python launchers/prepare_data.py --recipe bible-en --out data/bible-en --vocab-size 8000
    python launchers/prepare_data.py --recipe bible-ny --out data/bible-ny --vocab-size 8000
    python launchers/prepare_data.py --text a.txt b.txt --out data/mine --tokenizer data/bible-en/tokenizer.model
    python launchers/prepare_data.py --hf-dataset saved_ds/ --text-column text --out data/hf --vocab-size 16000

A cipher language (English in Cyrillic letters, ds_minimodel/data/cipher.py), with either tokenizer:

    python launchers/prepare_data.py --recipe bible-en-cipher --out data/bible-en-cipher-src \
        --cipher-tokenizer data/bible-en-body
    python launchers/prepare_data.py --recipe bible-en-cipher --out data/bible-en-cipher --vocab-size 8000 \
        --known-rows-from data/bible-en-body

Both write known_rows.json (target id -> its correct source id) beside the tokenizer.

A language outside the built-in table, from a verse-aligned Bible of your own (USFM: a file or a
directory of book files; or a TSV of book, chapter, verse, text), under a code of your choosing:

    python launchers/prepare_data.py --bible-file my_bible.usfm --language xx-test --out data/bible-xx-test \
        --vocab-size 8000

One document per chapter and the same held-out chapters as the recipes; index.json records the file
(path, sha256), and a pack adapted on it carries that record, so transfer evaluation scores the
language on the file's held-out verses (ds_minimodel/data/user_bible.py).

Text files hold one document per non-empty line; a `datasets` dataset one document per row.
The Bible recipes hold out evaluation chapters (see ds_minimodel/data/bibles.py) from every split.
"""

import argparse
import sys

from ds_minimodel.cli.common import ENVIRONMENT_ERRNOS, environment_error_line
from ds_minimodel.data.bibles import BIBLE_RECIPES
from ds_minimodel.data.recipes import prepare_dataset
from ds_minimodel.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recipe", choices=sorted(BIBLE_RECIPES), help="a built-in offline corpus")
    src.add_argument("--text", nargs="+", metavar="FILE", help="UTF-8 text files, one document per line")
    src.add_argument("--hf-dataset", metavar="DIR", help="a datasets.Dataset saved with save_to_disk")
    src.add_argument("--bible-file", metavar="PATH",
                     help="a verse-aligned Bible of your own: USFM (a file, or a directory of .usfm/.sfm files) or "
                          "TSV (book, chapter, verse, text); needs --language")
    p.add_argument("--language", metavar="CODE",
                   help="with --bible-file: its language's code, outside the built-in table (e.g. xx-test); "
                        "adapt.language and the packs then use it")
    p.add_argument("--text-column", default="text", help="column of --hf-dataset holding the text")
    p.add_argument("--out", required=True, help="dataset directory to create (must be absent or empty)")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--vocab-size", type=int, help="train a sentencepiece model of this size on the train split")
    tok.add_argument("--tokenizer", metavar="PATH", help="reuse this sentencepiece model or tokenizer.json")
    tok.add_argument("--cipher-tokenizer", metavar="SOURCE",
                     help="a cipher recipe only: tokenize with SOURCE's sentencepiece model (a dataset directory or "
                          "its tokenizer.model) with the cipher applied to every piece; every verse is checked to "
                          "segment as SOURCE segments the plain text")
    p.add_argument("--known-rows-from", metavar="SOURCE",
                   help="a cipher recipe with --vocab-size or --tokenizer: record which pieces decipher to a piece "
                        "of SOURCE's tokenizer (known_rows.json)")
    p.add_argument("--vocab-limit", choices=["hard", "soft"], default="hard",
                   help="with --vocab-size: exactly that many pieces (hard), or at most that many where the corpus "
                        "has fewer distinct pieces (soft)")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"], help="sentencepiece model type")
    lay = p.add_mutually_exclusive_group()
    lay.add_argument("--layout", choices=["xlmr", "bert"],
                     help="special-token ids of a trained tokenizer: XLM-R's (pad 1, the default) or BERT's (pad 0)")
    lay.add_argument("--special-ids-from", metavar="PATH",
                     help="lay a trained tokenizer's special tokens out after the model it is for: a Hugging Face "
                          "or ds_minimodel model directory, or a tokenizer file (its pad id is kept)")
    p.add_argument("--valid-fraction", type=float, default=0.01,
                   help="fraction of documents (Bible: chapters) for the valid split; 0 for none")
    p.add_argument("--max-chars", type=int, help="keep at most this many characters per split (fast tests)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the valid split, tokenizer sampling and the ciphered tokenizer's id permutation")
    p.add_argument("--threads", type=int, default=1, help="sentencepiece threads (1 = bit-reproducible)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def special_layout(args):
    """The trained tokenizer's layout: a name of SPECIAL_LAYOUTS, or the ids themselves."""
    if args.special_ids_from is None:
        return args.layout or "xlmr"
    if args.vocab_size is None:
        raise UserError("--special-ids-from lays out a tokenizer trained here: give it with --vocab-size")
    from ds_minimodel.artefacts.hf_source import special_ids_of
    from ds_minimodel.tokenizers.sentencepiece import (
        SPECIAL_LAYOUTS,
        layout_for_special_ids,
    )

    name, ids = layout_for_special_ids(special_ids_of(args.special_ids_from))
    return name if name in SPECIAL_LAYOUTS else ids


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        layout = special_layout(args)
        prepare_dataset(args.out, recipe=args.recipe, text_files=args.text, hf_dataset=args.hf_dataset,
                        text_column=args.text_column, vocab_size=args.vocab_size, tokenizer_path=args.tokenizer,
                        valid_fraction=args.valid_fraction, max_chars=args.max_chars, seed=args.seed,
                        overwrite=args.overwrite, model_type=args.model_type, num_threads=args.threads,
                        layout=layout, vocab_limit=args.vocab_limit, cipher_tokenizer=args.cipher_tokenizer,
                        known_rows_from=args.known_rows_from, bible_file=args.bible_file, language=args.language)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or read-only file system while writing: one line, not a traceback
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(environment_error_line(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
