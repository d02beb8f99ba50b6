"""Run one pipeline command as a subprocess, its output in a log file: what `make pipeline` and
`make study` do for every step, so that they exercise exactly the commands users run
(`python -m ds_minimodel.cli.<step>`).

`run_command(cmd, log, threads=None) -> seconds` is the public, stable signature; the pipeline
and the study both call it (and the study's tests replace it by an in-process runner of the
same signature).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from ds_minimodel.errors import UserError

# The directory holding the package this process runs: a child puts it first on its path, so it
# runs the same copy of ds_minimodel as its parent (an installed one, or a checkout's).
PACKAGE_HOME = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """This environment with PACKAGE_HOME first on PYTHONPATH: a child runs this copy of ds_minimodel."""
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (str(PACKAGE_HOME), os.environ.get("PYTHONPATH"))))}


def run_command(cmd: list, log: str | Path, threads: int | None = None) -> float:
    """Run `cmd` in this working directory with stdout and stderr into `log`; return its
    wall-clock seconds, or raise a UserError quoting the log's last lines if it fails. Relative
    paths in `cmd` mean what they mean here (the steps find configs as shipped.find does).

    `threads`: OMP_NUM_THREADS for the command (a single-process step gets every core, each rank
    of a multi-rank launch its share); None means every core. A value the user exported wins.
    """
    threads = threads if threads is not None else (os.cpu_count() or 1)
    env = {**child_env(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    cmd = [str(c) for c in cmd]
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise UserError(f"step failed ({proc.returncode}) after {seconds:.0f} s: {' '.join(cmd[:3])} ...; "
                        f"log {log}: {' | '.join(tail)}")
    print(f"  done in {seconds:.0f} s (log: {log})", flush=True)
    return seconds


def with_free_port(cmd: list) -> list:
    """A `deepspeed` launch with `--master_port` set to a port free now (unless it sets one): two
    pipelines on one machine would otherwise both take the launcher's default 29500, and the
    second's rendezvous would fail with EADDRINUSE."""
    if not cmd or Path(str(cmd[0])).name != "deepspeed" or "--master_port" in map(str, cmd):
        return cmd
    return [cmd[0], "--master_port", str(free_port()), *cmd[1:]]


def free_port() -> int:
    """A local TCP port free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
