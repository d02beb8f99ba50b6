"""What every launcher shares: the DeepSpeed-style arguments and one-line errors for bad input."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from ds_minimodel.errors import UserError


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


# Failures of the machine rather than of our code: a full disk or quota, a read-only or
# unreachable file system, missing permission. Wherever they strike (a metrics line, an export),
# they are reported in one line like bad input; any other OSError is a bug and keeps its traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                      errno.ENOTDIR}


def environment_error_line(e: OSError) -> str:
    return f"error: {e.strerror}: {e.filename}" if e.filename else f"error: {e.strerror}"


def run_main(fn: Callable[[], object]) -> None:
    """Run a launcher's body: bad input becomes `error: ...` on stderr and exit status 2."""
    try:
        fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(environment_error_line(e), file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def training_main(argv, doc: str, config_cls: type, run: Callable) -> None:
    """The whole body of a training launcher: parse, load the config strictly, run, shut down."""
    args = training_parser(doc.strip().splitlines()[0], default_ds_config="ds_configs/z0.json").parse_args(argv)

    def body():
        from ds_minimodel.config import load_config
        from ds_minimodel.training import engine

        cfg = load_config(config_cls, args.config, args.overrides)
        try:
            run(cfg, args.deepspeed, resume=args.resume)
        except BaseException:
            # No closing barrier on the way out of a failure: a peer may be dead or waiting in
            # another collective, and the barrier would hold this rank until the collective
            # timeout. Leaving the group at once also fails such peers fast.
            import torch

            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            raise
        engine.shutdown()

    run_main(body)
