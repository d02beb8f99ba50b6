"""The command line every training step takes (pretrain, minipost, adapt, finetune).

It lives below the CLI because the pipeline, which sits under the CLI, parses the commands it
builds with the same parser, to load each step's config at planning time exactly as the step will.
"""

from __future__ import annotations

import argparse


def training_parser(description: str, default_ds_config: str | None = None) -> argparse.ArgumentParser:
    """--config YAML, --deepspeed JSON, --resume, and `key.sub=value` overrides.

    `--deepspeed` is a plain path (DeepSpeed's own add_config_arguments would make it a flag),
    and `--local_rank`, which the deepspeed launcher appends, is accepted and ignored (the
    environment's LOCAL_RANK is what counts).
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML config (dataclass fields; unknown keys are errors)")
    p.add_argument("--deepspeed", default=default_ds_config, metavar="JSON",
                   help="DeepSpeed config (ZeRO stage, batch triple, offload)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint in train.out_dir")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p
