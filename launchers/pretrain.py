"""Step 1: MiniJoint pretraining under DeepSpeed (deepspeed, torchrun, mpirun or plain python).

    deepspeed --num_gpus 2 launchers/pretrain.py --deepspeed ds_configs/z3.json \
        --config configs/pretrain-demo.yaml train.steps=500

The code is ds_minimodel/cli/pretrain.py; the same command runs as `python -m ds_minimodel.cli.pretrain`
or `ds-minimodel pretrain` wherever the package is installed.
"""

from ds_minimodel.cli.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
