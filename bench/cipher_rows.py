"""Row precision@1 of cipher-language packs: how often a learned row's nearest source row (by
cosine, over the whole source table) is its known correct row (known_rows.json, written by
prepare_data for a cipher recipe). A diagnostic of how close each method's new embeddings came to
the right answer, which only a cipher language has (issue 25).

    python bench/cipher_rows.py --source runs/body/final --data data/bible-en-cipher \
        runs/study-cipher-quick/adapt-*-s*/pack

Prints one line per pack, then the mean per method (the pack's method and seed from pack.json).
"""

import argparse
import statistics
from collections import defaultdict

from ds_minimodel.artefacts.langpack import load_pack
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.cli.common import run_main
from ds_minimodel.data.cipher_vocab import read_known_rows
from ds_minimodel.tasks.metrics import row_precision_at_1


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="the model directory the packs were adapted from (its table)")
    p.add_argument("--data", required=True, help="the cipher language's dataset directory (known_rows.json)")
    p.add_argument("packs", nargs="+", help="language pack directories")
    args = p.parse_args(argv)

    def body():
        state, _, _ = read_model_dir(args.source)
        source = state["embeddings.word"]
        by_method = defaultdict(list)
        for path in args.packs:
            info, tensors, tok = load_pack(path)
            known = read_known_rows(args.data, tok)
            precision, rows = row_precision_at_1(tensors["word"], source, known)
            by_method[info.method].append(precision)
            print(f"{path}: {info.method} precision@1 {precision:.4f} over {rows} known rows")
        for method, values in by_method.items():
            print(f"{method}: mean precision@1 {statistics.mean(values):.4f} over {len(values)} pack(s)")

    run_main(body)


if __name__ == "__main__":
    main()
