"""Step 1: MiniJoint pretraining under DeepSpeed (deepspeed, torchrun, mpirun or plain python).

    deepspeed --num_gpus 2 launchers/pretrain.py --deepspeed ds_configs/z3.json \
        --config configs/pretrain-demo.yaml train.steps=500
"""

from ds_minimodel.cli.common import training_main


def main(argv=None) -> None:
    from ds_minimodel.config import PretrainConfig
    from ds_minimodel.steps import pretrain

    training_main(argv, __doc__, PretrainConfig, pretrain.run)


if __name__ == "__main__":
    main()
