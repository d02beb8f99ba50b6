"""Step 2: a new language's tokenizer + embeddings through the mini-model, or the full model.

    python launchers/prepare_data.py --recipe bible-ny --out data/bible-ny --vocab-size 8000
    python launchers/adapt.py --deepspeed ds_configs/z0.json --config configs/adapt-demo.yaml \
        adapt.model_dir=runs/demo/final adapt.through=mini adapt.language=ny data.path=data/bible-ny
    # several languages in one job, one pack each in train.out_dir/packs/<code>/:
    python launchers/adapt.py --config configs/adapt-demo.yaml adapt.model_dir=runs/demo/final \
        adapt.languages=[sw,tl,vi] data.path='data/bible-{lang}' train.out_dir=runs/adapt-3

The code is ds_minimodel/cli/adapt.py; the same command runs as `python -m ds_minimodel.cli.adapt`
or `ds-minimodel adapt` wherever the package is installed.
"""

from ds_minimodel.cli.adapt import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
