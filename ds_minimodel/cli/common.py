"""What every command shares: the DeepSpeed-style arguments and one-line errors for bad input."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from ds_minimodel import shipped
from ds_minimodel.errors import UserError
from ds_minimodel.training.launch_args import training_parser  # below the pipeline, which parses with it


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

        # configs/... and ds_configs/... names resolve to the package's copies when no such file
        # is here (shipped.py): an installed package runs from any directory.
        cfg = load_config(config_cls, shipped.find(args.config), args.overrides)
        ds_config = args.deepspeed and str(shipped.find(args.deepspeed))
        try:
            run(cfg, ds_config, resume=args.resume)
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


def wants_spec(argv: list[str]) -> bool:
    """Whether a pipeline's or study's arguments name a spec file (ds_minimodel/specs.py)."""
    return any(a == "--spec" or a.startswith("--spec=") for a in argv)


def args_or_spec(argv: list[str] | None, build_parser: Callable, spec_main: Callable) -> argparse.Namespace | None:
    """A pipeline's or study's parsed flags, or None once `spec_main` ran the spec they name."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_spec(argv):
        spec_main(argv)
        return None
    return build_parser().parse_args(argv)


def spec_parser(kind: str, home: str, example: str) -> argparse.ArgumentParser:
    """`--spec NAME [--plan] [key=value ...]`: the arguments of a pipeline or study spec run."""
    p = argparse.ArgumentParser(prog=f"{kind}.py --spec", description=f"run a {kind} spec ({home}/*.yaml)")
    p.add_argument("--spec", required=True, help=f"{home}/X.yaml, or X for the shipped {home}/X.yaml")
    p.add_argument("--plan", action="store_true", help="load the spec, print the commands it runs, stop")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"spec overrides, e.g. {example}")
    return p
