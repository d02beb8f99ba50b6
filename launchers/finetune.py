"""Step 3: fine-tune body + classification head on source-language task data (embeddings frozen).

    python launchers/finetune.py --deepspeed ds_configs/z0.json --config configs/finetune-demo.yaml \
        finetune.model_dir=runs/demo/final finetune.task=bible-genre

The code is ds_minimodel/cli/finetune.py; the same command runs as `python -m ds_minimodel.cli.finetune`
or `ds-minimodel finetune` wherever the package is installed.
"""

from ds_minimodel.cli.finetune import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
