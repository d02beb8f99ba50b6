"""Export the adapted model for a new language as a Hugging Face directory, with its tokenizer.

    # the masked LM: a pretrained body + a language pack -> AutoModelForMaskedLM, fill-mask
    python launchers/export.py mlm --model runs/demo/final --pack runs/adapt-minijoint/pack \
        --out runs/export/ny-mlm
    # the fine-tuned classifier + the same pack -> AutoModelForSequenceClassification
    python launchers/export.py classifier --model runs/finetune/final --pack runs/adapt-minijoint/pack \
        --out runs/export/ny-genre

Both load offline with plain transformers (AutoTokenizer + AutoModelFor...). A pack trained
under another body, a mean-pooling classifier (no stock transformers class computes it) and a
non-empty --out without --overwrite are refused with one line, writing nothing.
"""

import argparse

from ds_minimodel.cli.common import run_main

HELP = {
    "mlm": ("the masked LM for the pack's language",
            "pretrained model directory with a trained MLM head (pretraining's final/, a MiniPost run's final/ "
            "over all layers, or a Hugging Face *ForMaskedLM directory)"),
    "classifier": ("the fine-tuned classifier with the pack plugged in",
                   "fine-tuned classifier directory (step 3's final/)"),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for what, (description, model_help) in HELP.items():
        s = sub.add_parser(what, help=description, description=description)
        s.add_argument("--model", required=True, help=model_help)
        s.add_argument("--pack", required=True, help="language pack directory (step 2's pack/)")
        s.add_argument("--out", required=True, help="Hugging Face directory to write (absent or empty)")
        s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)

    def body():
        from ds_minimodel.artefacts import export

        write = export.export_mlm if args.what == "mlm" else export.export_classifier
        out = write(args.model, args.pack, args.out, args.overwrite)
        print(f"wrote {out} (config.json, model.safetensors, tokenizer.json)")

    run_main(body)


if __name__ == "__main__":
    main()
