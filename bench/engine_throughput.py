"""Pretraining tokens/s per engine, on the body's recipe: which way of running `pretrain.py` is
fastest on this machine.

    python bench/engine_throughput.py [--config configs/pretrain-body.yaml] [--steps 60]

Each variant is the real step run as the pipeline runs it (`python -m ds_minimodel.cli.pretrain`
or `deepspeed --module ...` in a subprocess, through subprocess_runner; this file never imports
DeepSpeed), for `--steps` steps of the same config, with the same global
batch (micro-batch halved on 2 ranks), no checkpoints and no evaluation; its tokens/s is the
median of the `tokens_per_s` its metrics.jsonl logs over the steps after the first log interval
(start-up, JIT builds and the first steps' allocations excluded). Variants:

- `torch, 1 rank`: train.engine=torch, plain python, every core as OpenMP threads;
- `deepspeed ZeRO-0 / ZeRO-3, 1 rank`: the `deepspeed` launcher, one process, every core;
- `deepspeed ZeRO-0 / ZeRO-3, 2 ranks`: two processes (gloo), the cores split between them;
- `deepspeed ZeRO-0 bf16, 1 rank`: the same in bf16 (train.dtype=bf16).

The variants run one after another, so a machine busy with something else biases the ones that
ran during it: run it on a quiet machine. The last line names the fastest and its ratio over
`torch, 1 rank`, the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from ds_minimodel.errors import UserError
from ds_minimodel.subprocess_runner import run_command, with_free_port
from ds_minimodel.training.metrics import read_metrics


def variants(cores: int) -> list[tuple[str, list[str], int, dict]]:
    """(name, launch prefix, ranks, extra overrides)."""
    py = sys.executable
    ds = str(Path(py).parent / "deepspeed")
    out = [("torch, 1 rank", [py], 1, {"train.engine": "torch"})]
    for stage in (0, 3):
        for ranks in (1, 2):
            if ranks > cores:
                continue
            out.append((f"deepspeed ZeRO-{stage}, {ranks} rank{'s' * (ranks > 1)}",
                        [ds, "--num_gpus", str(ranks)], ranks,
                        {"__ds": f"ds_configs/z{stage}.json", "train.engine": "deepspeed"}))
    # bf16 weights and activations (DeepSpeed's bf16 mode; the torch engine trains in fp32 only):
    # worth it where the CPU has bf16 dot products (AVX512-BF16, AMX), a loss elsewhere.
    out.append(("deepspeed ZeRO-0 bf16, 1 rank", [ds, "--num_gpus", "1"], 1,
                {"__ds": "ds_configs/z0.json", "train.engine": "deepspeed", "train.dtype": "bf16"}))
    return out


def run_variant(name, prefix, ranks, extra, config, steps, micro, out_root, cores) -> float:
    out = out_root / name.replace(" ", "_").replace(",", "")
    overrides = {"train.steps": steps, "train.micro_batch_size": micro // ranks, "train.grad_accum": 1,
                 "train.out_dir": out, "train.save_every": 10 ** 9, "train.eval_every": 10 ** 9,
                 "train.log_every": 5, "train.progress": "false", "data.eval_batches": 0,
                 **{k: v for k, v in extra.items() if not k.startswith("__")}}
    if "__ds" in extra:  # the deepspeed launcher runs the step as a module, like the pipeline
        cmd = with_free_port([*prefix, "--module", "ds_minimodel.cli.pretrain", "--deepspeed", extra["__ds"]])
    else:
        cmd = [*prefix, "-m", "ds_minimodel.cli.pretrain"]
    cmd += ["--config", config, *[f"{k}={v}" for k, v in overrides.items()]]
    try:
        run_command(cmd, out_root / (out.name + ".log"), threads=max(1, cores // ranks))
    except UserError as e:
        raise SystemExit(f"{name}: {e}") from None
    rows = read_metrics(out, "train")
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    if not rates:
        raise SystemExit(f"{name}: no tokens_per_s logged after the first interval (raise --steps)")
    return statistics.median(rates)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/pretrain-body.yaml")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--micro-batch", type=int, default=64, help="global sequences per step")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    # Each variant sets its own threads (cores / ranks); an exported value would override them all.
    os.environ.pop("OMP_NUM_THREADS", None)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out_root = Path(tempfile.mkdtemp(prefix="engine_throughput_"))
    results = {}
    try:
        for name, prefix, ranks, extra in variants(args.cores):
            results[name] = run_variant(name, prefix, ranks, extra, args.config, args.steps, args.micro_batch,
                                        out_root, args.cores)
            print(f"{name:>28}: {results[name]:8.0f} tokens/s", flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    base = results["torch, 1 rank"]
    best = max(results, key=results.get)
    for name, rate in results.items():
        print(f"{name:>28}: {rate / base:.2f}x torch, 1 rank")
    print(f"fastest: {best} ({results[best]:.0f} tokens/s, {results[best] / base:.2f}x torch, 1 rank)")


if __name__ == "__main__":
    main()
