"""An exported classifier's accuracy on the held-out verses of its language, with plain transformers.

    python bench/exported_accuracy.py runs/pipeline-multilingual/export/ny-genre \
        [--expect runs/pipeline-multilingual/transfer.json --pack runs/pipeline-multilingual/adapt-minipost/pack]

The model and tokenizer come from the exported directory alone (AutoTokenizer,
AutoModelForSequenceClassification: nothing of ds_minimodel's model code); the held-out verses
come from the installed Bibles, the same test set `launchers/evaluate.py` scores. With --expect,
the accuracy must equal the one evaluate.py recorded for --pack in transfer.json, and the
per-verse right/wrong flags must match too: exits 1 otherwise. docs/export.md shows the
core of it.
"""

import argparse
import json
import os
import sys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="exported classifier directory (launchers/export.py classifier --out)")
    p.add_argument("--language", default=None, help="the test set's language (default: the export's, from its config)")
    p.add_argument("--max-len", type=int, default=64, help="truncation, as fine-tuning's finetune.max_len")
    p.add_argument("--expect", default=None, help="transfer.json (launchers/evaluate.py --out) to compare with")
    p.add_argument("--pack", default=None, help="with --expect: the pack directory the export plugged in")
    args = p.parse_args()
    from ds_minimodel.artefacts.export import PROVENANCE  # the export's record of what went in

    language = args.language or json.load(open(os.path.join(args.model, PROVENANCE)))["language"]

    # --- the docs/export.md snippet ----------------------------------------------------------------
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ds_minimodel.tasks.bible import verse_genre_task  # held-out verses, from the installed Bibles

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    test = verse_genre_task().test_in(language)
    flags = []
    with torch.no_grad():
        for i in range(0, len(test), 32):
            batch = test[i:i + 32]
            inputs = tok([ex.text_a for ex in batch], truncation=True, max_length=args.max_len, padding=True,
                         return_tensors="pt")
            predicted = model(**inputs).logits.argmax(-1).tolist()
            flags += [p == ex.label for p, ex in zip(predicted, batch)]
    accuracy = sum(flags) / len(flags)
    print(f"exported classifier: accuracy {accuracy:.4f} on {len(test)} held-out verses ({language})")
    # ----------------------------------------------------------------------------------------------

    if args.expect:
        packs = json.load(open(args.expect))["classification"]["packs"]
        key = args.pack or (next(iter(packs)) if len(packs) == 1 else None)
        if key not in packs:
            sys.exit(f"error: --pack {args.pack!r} is not in {args.expect} (has: {', '.join(packs)})")
        want = packs[key]
        bits = "".join("1" if f else "0" for f in flags)
        same = bits == want["correct"]
        print(f"evaluate.py ({args.expect}, {key}): accuracy {want['accuracy']:.4f} on {want['examples']} verses; "
              f"per-verse flags {'identical' if same else 'DIFFER on ' + str(sum(a != b for a, b in zip(bits, want['correct']))) + ' verses'}")
        if not same or accuracy != want["accuracy"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
