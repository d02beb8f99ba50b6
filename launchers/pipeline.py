"""The whole English -> Chichewa pipeline on CPU: pretrain (MiniJoint), MiniPost, adaptation three
ways (standard / MiniJoint / MiniPost) with equal step budgets, English fine-tuning, zero-shot
transfer, and report.md with plots.

    python launchers/pipeline.py --work runs/pipeline [--reuse-pretrain runs/demo]
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ds_minimodel.cli import run_main  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/pipeline")
    p.add_argument("--data-root", default="data")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--reuse-pretrain", default=None, help="a finished pretrain run directory to start from")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--minipost-steps", type=int, default=150)
    p.add_argument("--adapt-steps", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--retrieval-pairs", type=int, default=1000)
    args = p.parse_args(argv)

    def body():
        from ds_minimodel.pipeline import PipelineOptions, run

        run(PipelineOptions(work=Path(args.work), data_root=Path(args.data_root), nproc=args.nproc,
                            reuse_pretrain=Path(args.reuse_pretrain) if args.reuse_pretrain else None,
                            pretrain_steps=args.pretrain_steps, minipost_steps=args.minipost_steps,
                            adapt_steps=args.adapt_steps, finetune_steps=args.finetune_steps,
                            retrieval_pairs=args.retrieval_pairs))

    run_main(body)


if __name__ == "__main__":
    main()
