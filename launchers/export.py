"""Export the adapted model for a new language as a Hugging Face directory, with its tokenizer.

    # the masked LM: a pretrained body + a language pack -> AutoModelForMaskedLM, fill-mask
    python launchers/export.py mlm --model runs/demo/final --pack runs/adapt-minijoint/pack \
        --out runs/export/ny-mlm
    # the fine-tuned classifier + the same pack -> AutoModelForSequenceClassification
    python launchers/export.py classifier --model runs/finetune/final --pack runs/adapt-minijoint/pack \
        --out runs/export/ny-genre

The code is ds_minimodel/cli/export.py; the same command runs as `python -m ds_minimodel.cli.export`
or `ds-minimodel export` wherever the package is installed.
"""

from ds_minimodel.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
