"""Step 1b: a MiniPost mini-model carved from a pretrained encoder (ours or a local HF directory).

    python launchers/minipost.py --deepspeed ds_configs/z0.json --config configs/minipost-demo.yaml \
        minipost.source=runs/demo/final minipost.mini_depth=2 minipost.top_layers=1
"""

from ds_minimodel.cli.common import training_main


def main(argv=None) -> None:
    from ds_minimodel.config import MiniPostConfig
    from ds_minimodel.steps import minipost

    training_main(argv, __doc__, MiniPostConfig, minipost.run)


if __name__ == "__main__":
    main()
