"""Adaptation runs one at a time with every core, against `--jobs` of them side by side with a
share of the cores each: whether a study spec's `jobs: 2` (languages side by side) pays on this
machine.

Both sides run the same real runs: the adapt launcher (`python -m ds_minimodel.cli.adapt`), with
a study run's settings (experiments.run_settings: its checkpoints, its validation loss at each),
through the given model and body, on the given target data, `--steps` steps each, each run a
process of its own as in a study. One at a time: `--jobs` runs in turn, each with
OMP_NUM_THREADS = cores. Side by side: the same runs started together, each with
OMP_NUM_THREADS = cores / jobs. The speedup is the first side's wall-clock over the second's;
process start-up (imports, DeepSpeed's init) is included on both sides, as in a study.

    python bench/study_jobs.py --model runs/body/final --data data/bible-en-cipher [--through full]
        [--steps 150] [--jobs 2] [--set data.seq_len=64 adapt.language=xx ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ds_minimodel.study.experiments import run_settings
from ds_minimodel.subprocess_runner import child_env


def adapt_command(model: str, through: str, data: str, out: Path, steps: int, seed: int, extra: list[str]) -> list:
    overrides = run_settings(model, through, data, out, steps, 1, seed, "random", extra)
    return [sys.executable, "-m", "ds_minimodel.cli.adapt", "--deepspeed", "ds_configs/z0.json",
            "--config", "configs/adapt-demo.yaml", *overrides]


def run_side(commands: list[list], threads: int, together: bool, logs: Path) -> float:
    """Wall-clock seconds of the commands, started together or one after another."""
    env = {**child_env(), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    procs = []
    for i, cmd in enumerate(commands):
        log = open(logs / f"{'together' if together else 'alone'}-{i}.log", "w", encoding="utf-8")
        procs.append((subprocess.Popen([str(c) for c in cmd], env=env, stdout=log, stderr=subprocess.STDOUT), log))
        if not together:
            procs[-1][0].wait()
    for proc, log in procs:
        proc.wait()
        log.close()
        if proc.returncode != 0:
            tail = Path(log.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise SystemExit(f"an adaptation run failed ({proc.returncode}): {' | '.join(tail)}")
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the model directory the runs adapt (a study's --pretrained)")
    p.add_argument("--data", required=True, help="the target language's dataset directory")
    p.add_argument("--through", default="full", help="adapt.through: full or mini")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--set", nargs="*", default=["data.seq_len=64", "adapt.language=xx"],
                   help="extra adapt.py overrides (a study gives adapt.language its language's code)")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="study-jobs-") as tmp:
        tmp = Path(tmp)

        def commands(side: str) -> list[list]:
            return [adapt_command(args.model, args.through, args.data, tmp / f"{side}-{i}", args.steps, i, args.set)
                    for i in range(args.jobs)]

        alone = run_side(commands("alone"), cores, together=False, logs=tmp)
        together = run_side(commands("together"), max(1, cores // args.jobs), together=True, logs=tmp)
    steps = args.jobs * args.steps
    print(f"{args.jobs} runs of {args.steps} steps through {args.model} ({args.through}), {cores} cores")
    print(f"  one at a time, {cores} threads each:   {alone:7.1f} s  ({steps / alone:.2f} steps/s)")
    print(f"  side by side, {max(1, cores // args.jobs)} thread(s) each: {together:7.1f} s  "
          f"({steps / together:.2f} steps/s)")
    print(f"side by side / one at a time: {alone / together:.2f}x the throughput")


if __name__ == "__main__":
    main()
