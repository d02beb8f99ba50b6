"""The whole English -> Chichewa pipeline: pretraining, MiniPost, adaptation, fine-tuning, transfer.

    python launchers/pipeline.py --work runs/pipeline [--reuse-pretrain runs/demo] [--no-regular] [--plan]
    python launchers/pipeline.py --work runs/pipeline-languages --languages sw,tl,vi [--reuse-pretrain runs/demo]
    python launchers/pipeline.py --work runs/pipeline-pretrained --from-pretrained [HF_DIR] [--k 3] [--plan]

The code is ds_minimodel/cli/pipeline.py; the same command runs as `python -m ds_minimodel.cli.pipeline`
or `ds-minimodel pipeline` wherever the package is installed.
"""

from ds_minimodel.cli.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
