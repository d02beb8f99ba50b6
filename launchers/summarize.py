"""Summarise a training run: first and last validation losses, and a PNG of the curves.

    python launchers/summarize.py runs/demo [--require-drop 0.5]

The code is ds_minimodel/cli/summarize.py; the same command runs as `python -m ds_minimodel.cli.summarize`
or `ds-minimodel summarize` wherever the package is installed.
"""

from ds_minimodel.cli.summarize import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
