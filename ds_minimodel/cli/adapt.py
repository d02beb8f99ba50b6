"""Step 2: a new language's tokenizer + embeddings through the mini-model, or the full model.

    python launchers/prepare_data.py --recipe bible-ny --out data/bible-ny --vocab-size 8000
    python launchers/adapt.py --deepspeed ds_configs/z0.json --config configs/adapt-demo.yaml \
        adapt.model_dir=runs/demo/final adapt.through=mini adapt.language=ny data.path=data/bible-ny
    # several languages in one job, one pack each in train.out_dir/packs/<code>/:
    python launchers/adapt.py --config configs/adapt-demo.yaml adapt.model_dir=runs/demo/final \
        adapt.languages=[sw,tl,vi] data.path='data/bible-{lang}' train.out_dir=runs/adapt-3
"""

from ds_minimodel.cli.common import training_main


def main(argv=None) -> None:
    from ds_minimodel.config import AdaptConfig
    from ds_minimodel.steps import adapt

    training_main(argv, __doc__, AdaptConfig, adapt.run)


if __name__ == "__main__":
    main()
