"""Step 4: plug language packs into a fine-tuned model and evaluate zero-shot transfer.

    python launchers/evaluate.py --model runs/finetune/final --pack runs/adapt-minijoint/pack \
        --pack runs/adapt-full/pack --pretrained runs/demo/final --out runs/transfer.json

The code is ds_minimodel/cli/evaluate.py; the same command runs as `python -m ds_minimodel.cli.evaluate`
or `ds-minimodel evaluate` wherever the package is installed.
"""

from ds_minimodel.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
