"""Step 3: fine-tune body + classification head on source-language task data (embeddings frozen).

    python launchers/finetune.py --deepspeed ds_configs/z0.json --config configs/finetune-demo.yaml \
        finetune.model_dir=runs/demo/final finetune.task=bible-genre
"""

from ds_minimodel.cli.common import training_main


def main(argv=None) -> None:
    from ds_minimodel.config import FinetuneConfig
    from ds_minimodel.steps import finetune

    training_main(argv, __doc__, FinetuneConfig, finetune.run)


if __name__ == "__main__":
    main()
