"""Step 1b: a MiniPost mini-model carved from a pretrained encoder (ours or a local HF directory).

    python launchers/minipost.py --deepspeed ds_configs/z0.json --config configs/minipost-cpu.yaml \
        minipost.source=runs/demo/final minipost.mini_depth=2 minipost.top_layers=1
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ds_minimodel.cli import training_main  # noqa: E402


def main(argv=None) -> None:
    from ds_minimodel.config import MiniPostConfig
    from ds_minimodel.steps import minipost

    training_main(argv, __doc__, MiniPostConfig, minipost.run)


if __name__ == "__main__":
    main()
