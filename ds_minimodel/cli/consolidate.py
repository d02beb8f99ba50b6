"""Consolidate a DeepSpeed checkpoint (any ZeRO stage) into one fp32 state dict + HF directory.

    python launchers/consolidate.py runs/base/checkpoints --out runs/base/export [--tag step_00000500]
"""

import argparse

from ds_minimodel.cli.common import run_main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint_dir", help="a run's checkpoints/ directory")
    p.add_argument("--out", required=True, help="directory for model.pt, config.json and hf/")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest complete)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece model to copy into hf/")
    args = p.parse_args(argv)

    def body():
        from ds_minimodel.artefacts.checkpoint_export import export_checkpoint

        out = export_checkpoint(args.checkpoint_dir, args.out, args.tag, args.tokenizer)
        print(f"wrote {out}/model.pt, {out}/config.json and {out}/hf")

    run_main(body)


if __name__ == "__main__":
    main()
