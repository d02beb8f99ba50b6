"""Deliberate faults at exact points of a run, for the fault-tolerance tests: inert unless the
environment variable DSM_FAULT is set.

Killing a process "at the right moment" from outside is a race (a tiny run saves a checkpoint in
milliseconds), so the tests ask the run to hurt itself instead:

    DSM_FAULT=<action>:<point>:<step>[:<rank>]

    action  kill    SIGKILL this process: a crashed node, no cleanup, no goodbye
            stop    SIGSTOP this process: a hung node, alive but silent (its sockets stay open)
            enospc  raise OSError(ENOSPC) as a full disk would
    point   step         before optimizer step <step> starts (steps < <step> are done)
            save_shards  inside the save of step <step>: this rank's DeepSpeed shards and RNG
                         file are written, meta.json is not (the checkpoint is incomplete)
            save_meta    inside the save of step <step>: meta.json is written (the checkpoint
                         is complete), `latest` is not yet moved to it
    rank    only this global rank (default: every rank)

e.g. DSM_FAULT=kill:save_shards:4:1 kills rank 1 in the middle of writing checkpoint step 4.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "DSM_FAULT"
ACTIONS = ("kill", "stop", "enospc")
POINTS = ("step", "save_shards", "save_meta")


def parse(spec: str) -> tuple[str, str, int, int | None]:
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] not in ACTIONS or parts[1] not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: expected <{'|'.join(ACTIONS)}>:<{'|'.join(POINTS)}>:<step>[:<rank>]")
    return parts[0], parts[1], int(parts[2]), int(parts[3]) if len(parts) == 4 else None


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def inject(point: str, step: int) -> None:
    """Called at each named point of the loop and the checkpointer; does nothing by default."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action, at_point, at_step, at_rank = parse(spec)
    if at_point != point or at_step != step or (at_rank is not None and at_rank != _rank()):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"(injected by {ENV}={spec})")
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)
