"""Step 1b: a MiniPost mini-model carved from a pretrained encoder (ours or a local HF directory).

    python launchers/minipost.py --deepspeed ds_configs/z0.json --config configs/minipost-demo.yaml \
        minipost.source=runs/demo/final minipost.mini_depth=2 minipost.top_layers=1

The code is ds_minimodel/cli/minipost.py; the same command runs as `python -m ds_minimodel.cli.minipost`
or `ds-minimodel minipost` wherever the package is installed.
"""

from ds_minimodel.cli.minipost import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
