"""Consolidate a DeepSpeed checkpoint (any ZeRO stage) into one fp32 state dict + HF directory.

    python launchers/consolidate.py runs/base/checkpoints --out runs/base/export [--tag step_00000500]

The code is ds_minimodel/cli/consolidate.py; the same command runs as `python -m ds_minimodel.cli.consolidate`
or `ds-minimodel consolidate` wherever the package is installed.
"""

from ds_minimodel.cli.consolidate import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
