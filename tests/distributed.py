"""Run a function on N ranks forked from the pytest process (as DeepSpeed's DistributedTest does).

Forking after torch, deepspeed and transformers are imported makes a 2-rank test cost a second
instead of a launcher's start-up; ranks talk over gloo on a free local port with one thread
each. When one rank fails, its peer is killed at once so a test never hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import socket
import time
import traceback

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, rank, world_size, port, queue, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        queue.put((rank, "ok", fn(rank, *args)))
    except BaseException as e:  # report everything, including SystemExit from a launcher main
        queue.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        code = 1
    # os._exit skips atexit handlers (the parent's, inherited by fork), so flush the queue first.
    queue.close()
    queue.join_thread()
    os._exit(code)


def run_ranks(fn, world_size: int = 2, args: tuple = (), timeout: float = 300.0, kill_on_error: bool = True) -> list:
    """fn(rank, *args) on each rank; returns the per-rank results or raises with the errors.

    kill_on_error: kill the peers at the first failure (a test never hangs); False waits (up to
    `timeout`) for every rank to fail or finish by itself, to test how survivors behave.
    """
    import deepspeed  # noqa: F401  (imported before forking, so children don't pay for it)
    import torch._dynamo  # noqa: F401  (the same: torch.optim imports it at the first optimizer, seconds)

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world_size, port, queue, args), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    deadline = time.monotonic() + timeout
    while len(results) + len(errors) < world_size:
        try:
            rank, status, payload = queue.get(timeout=0.2)
            (results if status == "ok" else errors)[rank] = payload
        except queue_module.Empty:
            pass
        if errors and kill_on_error:
            break
        if time.monotonic() > deadline:
            errors[-1] = f"timed out after {timeout} s"
            break
        silent = [r for r, p in enumerate(procs)
                  if p.exitcode is not None and r not in results and r not in errors]
        if silent and queue.empty():
            time.sleep(0.5)  # its report may still be in the pipe
            if queue.empty():
                for r in silent:
                    errors[r] = f"died without reporting (exit code {procs[r].exitcode})"
                if kill_on_error:
                    break
    for p in procs:
        if errors and p.is_alive():
            p.kill()
        p.join(timeout=30)
    if errors:
        raise AssertionError("\n".join(f"rank {r} failed:\n{msg}" for r, msg in sorted(errors.items())))
    return [results[r] for r in range(world_size)]
