"""FLOPs of one step of a pipeline step kind, per component, against the usual rules of thumb.

    python launchers/profile_flops.py --config configs/pretrain-xlmr-base.yaml --step adapt_minijoint
    python launchers/profile_flops.py --config configs/pretrain-xlmr-base.yaml --step adapt_full \
        --batch-size 8 --seq-len 512 --mask-prob 0.15 --check --check-scale small

The code is ds_minimodel/cli/profile_flops.py; the same command runs as `python -m ds_minimodel.cli.profile_flops`
or `ds-minimodel profile_flops` wherever the package is installed.
"""

from ds_minimodel.cli.profile_flops import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
