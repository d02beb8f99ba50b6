"""Step 1: MiniJoint pretraining under DeepSpeed (deepspeed, torchrun, mpirun or plain python).

    deepspeed --num_gpus 2 launchers/pretrain.py --deepspeed ds_configs/z3.json \
        --config configs/demo-cpu.yaml train.steps=500
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ds_minimodel.cli import run_main, training_parser  # noqa: E402


def main(argv=None) -> None:
    args = training_parser(__doc__.splitlines()[0], default_ds_config="ds_configs/z0.json").parse_args(argv)

    def body():
        from ds_minimodel import engine, pretrain
        from ds_minimodel.config import PretrainConfig, load_config

        cfg = load_config(PretrainConfig, args.config, args.overrides)
        try:
            pretrain.run(cfg, args.deepspeed, resume=args.resume)
        finally:
            engine.shutdown()

    run_main(body)


if __name__ == "__main__":
    main()
