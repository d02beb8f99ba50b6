"""Seconds per language-step: one adaptation job over N languages against N separate runs.

Both sides run the real training step (`training.loop.train_step`) under the same engine
(DeepSpeed ZeRO-0 by default, world of one), on the same shapes: the same MiniJoint mini-model,
and for every language the same batch and a new vocabulary of the same size. Separately: N
engines, each over its own `MLMEncoder` (its own copy of the frozen body, as N processes would
hold), stepped in turn. Together: one engine over a `MultiLanguageMLM`, as the job builds it
(`engine.GroupedEngine`: one micro-batch per language, one optimizer step for all, each
language clipped by its own norm). Dropout and gradient clipping are on, as in real runs. The
two are timed in rounds within this run, the order swapped every round; the speedup is the
geometric mean of the rounds' ratios (each round pairs the sides under the same machine load),
the phase table each side's median round.
BENCH_CPU_TIME=1 times with the process's CPU time instead of the wall clock (steadier on a
shared machine); BENCH_VERBOSE=1 prints every round.

The per-phase table (forward, backward, optimizer step, each per language-step) is where the
time goes: a language's forward and backward are the same work in both (its rows never meet
another's, to keep its dropout stream and softmax its own), so what one job saves is only what
an optimizer step costs once however many languages it holds.

    python bench/multilang_speed.py [--languages 4] [--steps 3] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from ds_minimodel.artefacts.surgery import (  # noqa: E402
    BIASES,
    TIED,
    WORD,
    minijoint_mini,
    plug_embeddings,
)
from ds_minimodel.config import ModelConfig, OptimConfig  # noqa: E402
from ds_minimodel.method.flops import step_flops  # noqa: E402
from ds_minimodel.method.methods import ADAPT_KIND, MINIJOINT  # noqa: E402
from ds_minimodel.method.rules import set_requires_grad_for_step  # noqa: E402
from ds_minimodel.model import IGNORE_INDEX, MLMEncoder, MultiLanguageMLM  # noqa: E402
from ds_minimodel.training import engine as ds  # noqa: E402
from ds_minimodel.training import loop  # noqa: E402

KIND = ADAPT_KIND[MINIJOINT]
PHASES = ("forward", "backward", "step")
CLOCK = time.process_time if os.environ.get("BENCH_CPU_TIME") else time.perf_counter


class Timed:
    """An engine whose forward, backward and step add their seconds to `seconds[phase]`."""

    def __init__(self, engine, seconds: dict):
        self.engine, self.seconds, self.device = engine, seconds, engine.device

    def _time(self, phase, fn, *args, **kwargs):
        t0 = CLOCK()
        out = fn(*args, **kwargs)
        self.seconds[phase] += CLOCK() - t0
        return out

    def __call__(self, *args, **kwargs):
        return self._time("forward", self.engine, *args, **kwargs)

    def backward(self, loss):
        return self._time("backward", self.engine.backward, loss)

    def step(self):
        return self._time("step", self.engine.step)


def build_engine(model, batch_size: int, steps: int, use_deepspeed: bool, parts: int = 1, clip_groups=None):
    """The engine of a run (parts = 1) or of a job of `parts` languages, as training/job.py builds it."""
    ds_config = ds.resolve_ds_config({"zero_optimization": {"stage": 0}}, 1, micro_batch_size=batch_size,
                                     grad_accum=1, grad_clip=1.0)
    if parts == 1:
        return ds.build_engine(model, ds_config, OptimConfig(lr=1e-3, warmup_steps=0), steps, use_deepspeed)
    return ds.build_engine(model, ds.accumulate_parts(ds_config, parts, 1), OptimConfig(lr=1e-3, warmup_steps=0),
                           steps, use_deepspeed, clip_groups=clip_groups, loss_accum=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--languages", type=int, default=4)
    p.add_argument("--layers", type=int, default=8, help="full model's layers; the mini-model runs k = layers/4")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000, help="each language's new vocabulary")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="sequences per language per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds of both sides (even)")
    p.add_argument("--engine", choices=("deepspeed", "torch"), default="deepspeed")
    p.add_argument("--kernels", default="auto")
    p.add_argument("--quick", action="store_true", help="small shapes, seconds")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.rounds % 2:
        p.error("--rounds must be even: the order of the two sides alternates")
    if args.quick:
        args.layers, args.hidden, args.intermediate, args.vocab, args.seq_len = 4, 64, 256, 2000, 64
        args.steps, args.rounds = 2, 4
    ds.init_distributed()
    n, use_ds = args.languages, args.engine == "deepspeed"
    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                      intermediate_size=args.intermediate, mini_depth=max(1, args.layers // 4),
                      kernels=args.kernels, hidden_dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    mini_state, mini_cfg = minijoint_mini(MLMEncoder(cfg).state_dict(), cfg)
    codes = [f"l{i}" for i in range(n)]
    g = torch.Generator().manual_seed(0)
    starts, batches = {}, {}
    for code in codes:  # a new vocabulary and a batch of its own per language, all of one shape
        word = torch.randn(args.vocab, args.hidden, generator=g) * 0.02
        starts[code], lang_cfg = plug_embeddings(mini_state, mini_cfg, word, torch.zeros(args.vocab), cfg.pad_token_id)
        ids = torch.randint(5, args.vocab, (args.batch, args.seq_len), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, IGNORE_INDEX))
        batches[code] = {"input_ids": ids, "labels": labels}
    lang_cfg = dataclasses.replace(lang_cfg, kernels=args.kernels)
    total = args.steps * args.rounds + 1

    alone = {}
    for code in codes:
        model = MLMEncoder(lang_cfg)
        model.load_state_dict(starts[code])
        set_requires_grad_for_step(model, KIND)
        alone[code] = build_engine(model, args.batch, total, use_ds)
    multi_model = MultiLanguageMLM(dataclasses.replace(lang_cfg, vocab_size=None), dict.fromkeys(codes, args.vocab))
    multi_model.load_state_dict({MultiLanguageMLM.prefix(codes, c) + k: t for c in codes for k, t in starts[c].items()})
    for encoder in multi_model.encoders:
        set_requires_grad_for_step(encoder, KIND)
    multi = build_engine(multi_model, args.batch, total, use_ds, parts=n, clip_groups=multi_model.trainable_groups())

    def run_alone(seconds):
        for code in codes:
            loop.train_step(Timed(alone[code], seconds), [batches[code]], {"route": "final"}, ("loss",))

    def run_multi(seconds):
        # One language per micro-batch, as data.loader.LanguageLoaders hands them to the loop.
        loop.train_step(Timed(multi, seconds), [{"batches": {code: batches[code]}} for code in codes],
                        {"route": "final"}, ("loss",))

    run_alone(dict.fromkeys(PHASES, 0.0))  # warm-up: allocations, first-call paths
    run_multi(dict.fromkeys(PHASES, 0.0))
    rounds = {"separate": [], "one job": []}
    sides = [("separate", run_alone), ("one job", run_multi)]
    for r in range(args.rounds):
        for side, fn in sides if r % 2 == 0 else sides[::-1]:  # who goes first alternates
            seconds = dict.fromkeys(PHASES, 0.0)
            for _ in range(args.steps):
                fn(seconds)
            rounds[side].append({k: v / (args.steps * n) for k, v in seconds.items()})  # per language-step
            if os.environ.get("BENCH_VERBOSE"):
                print(r, side, {k: round(v, 4) for k, v in rounds[side][-1].items()})
    # Each round pairs the two sides under the same machine load; the order alternates (the side
    # that runs second in a round measured slower here), so the geometric mean of the rounds'
    # ratios over an even number of rounds cancels it.
    ratios = [sum(a.values()) / sum(b.values()) for a, b in zip(rounds["separate"], rounds["one job"])]
    speedup = math.exp(statistics.fmean(math.log(x) for x in ratios))
    median = {side: {ph: statistics.median(r[ph] for r in rs) for ph in PHASES} for side, rs in rounds.items()}

    m = int(batches[codes[0]]["labels"].ne(IGNORE_INDEX).sum())
    flops = step_flops(lang_cfg, KIND, args.batch, args.seq_len, m).total
    body = sum(t.numel() * t.element_size() for k, t in mini_state.items() if k not in (WORD, *TIED, *BIASES))
    print(f"shapes: MiniJoint mini-model of k={mini_cfg.num_layers} of {args.layers} layers, hidden {args.hidden}, "
          f"{args.heads} heads, intermediate {args.intermediate}; {n} languages, each a vocabulary of {args.vocab} "
          f"and a batch of {args.batch} x {args.seq_len} ({m} masked); engine {args.engine} (ZeRO-0), "
          f"{torch.get_num_threads()} threads")
    print(f"frozen body in memory: {n} x {body / 2**20:.1f} MiB separately, {body / 2**20:.1f} MiB in one job")
    clock = "CPU" if CLOCK is time.process_time else "wall-clock"
    print(f"{clock} s per language-step, median of {args.rounds} rounds of {args.steps} steps:")
    print(f"{'':<10} " + " ".join(f"{ph:>9}" for ph in PHASES) + f" {'total':>9} {'GFLOP/s':>8}")
    for side, per in median.items():
        t = sum(per.values())
        print(f"{side:<10} " + " ".join(f"{per[ph]:9.4f}" for ph in PHASES) + f" {t:9.4f} {flops / t / 1e9:8.2f}")
    print(f"per-round speedups: {' '.join(f'{x:.3f}' for x in ratios)} (geometric mean below)")
    print(f"multi-language adapt speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
