"""Seconds per adaptation step (step 2) through the MiniJoint mini-model against the full model.

Also through a MiniPost mini-model (layers 1..k plus one top layer, `--minipost-top`): it runs
k + 1 layers where MiniJoint runs k, so its gain is smaller; printed before the last line.

Both runs are the real step: an `MLMEncoder` built exactly as `adapt.py` builds it (the mini
one carved by `minimodel.minijoint_mini`), only the word table and output bias trainable, under
the same DeepSpeed engine (ZeRO-0, world of one), on the same masked batch.

Shapes are XLM-R base's body (hidden 768, 12 heads, 3072, 12 layers, k = L/4 = 3) at sequence
length 128. The vocabulary is the *new language's* tokenizer (step 2 trains a fresh one; 32k by
default, `--vocab 250002` for XLM-R's size, where the shared decoder caps the gain near 2x).

    python bench/adapt_speed.py [--steps 3] [--vocab 32000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from ds_minimodel.artefacts.surgery import build_minipost, minijoint_mini  # noqa: E402
from ds_minimodel.config import ModelConfig, OptimConfig  # noqa: E402
from ds_minimodel.method.flops import step_flops  # noqa: E402
from ds_minimodel.method.methods import ADAPT_KIND, FULL, MINIJOINT, MINIPOST  # noqa: E402
from ds_minimodel.method.rules import set_requires_grad_for_step  # noqa: E402
from ds_minimodel.model import IGNORE_INDEX, MLMEncoder  # noqa: E402
from ds_minimodel.training import engine as ds  # noqa: E402

KINDS = {"full": ADAPT_KIND[FULL], "mini": ADAPT_KIND[MINIJOINT], "minipost": ADAPT_KIND[MINIPOST]}


def build(cfg: ModelConfig, state: dict, kind: str) -> MLMEncoder:
    model = MLMEncoder(cfg)
    model.load_state_dict(state, strict=True)
    set_requires_grad_for_step(model, kind)
    return model


def seconds_per_step(model: MLMEncoder, batch: dict, steps: int, warmup: int) -> float:
    ds_config = ds.resolve_ds_config({"zero_optimization": {"stage": 0}}, 1,
                                     micro_batch_size=batch["input_ids"].shape[0], grad_accum=1)
    engine = ds.build_engine(model, ds_config, OptimConfig(lr=1e-3, warmup_steps=0), steps + warmup)
    times = []
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        out = engine(batch["input_ids"], labels=batch["labels"], route="final")
        engine.backward(out["loss"])
        engine.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del engine
    gc.collect()
    return min(times)  # best of N: the least disturbed by whatever else the machine does


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--kernels", default="auto")
    p.add_argument("--minipost-top", type=int, default=1, help="MiniPost top layers (0: skip MiniPost)")
    p.add_argument("--quick", action="store_true", help="small shapes, seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.intermediate, args.vocab = 8, 128, 4, 512, 4000
    ds.init_distributed()
    k = max(1, args.layers // 4)
    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                      intermediate_size=args.intermediate, mini_depth=k, kernels=args.kernels,
                      hidden_dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    full_state = MLMEncoder(cfg).state_dict()
    mini_state, mini_cfg = minijoint_mini(full_state, cfg)
    full_cfg = dataclasses.replace(cfg, mini_depth=None)
    full_state = {n: t for n, t in full_state.items() if not n.startswith("mid_head.")}
    paths = {"full": (full_cfg, full_state), "mini": (mini_cfg, mini_state)}
    if args.minipost_top:
        fresh = MLMEncoder(dataclasses.replace(full_cfg, num_layers=k + args.minipost_top)).state_dict()
        post_state, post_cfg = build_minipost(full_state, full_cfg, k, args.minipost_top, "copy", fresh)
        paths["minipost"] = (post_cfg, post_state)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, args.vocab, (args.batch, args.seq_len), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, IGNORE_INDEX))
    batch = {"input_ids": ids, "labels": labels}
    m = int(labels.ne(IGNORE_INDEX).sum())
    print(f"shapes: hidden {args.hidden}, {args.heads} heads, intermediate {args.intermediate}, {args.layers} layers "
          f"(mini: k={k}), vocab {args.vocab}, batch {args.batch} x {args.seq_len}, {m} masked, "
          f"kernels {args.kernels}, {torch.get_num_threads()} threads")

    seconds, flops = {}, {}
    for name, (c, state) in paths.items():
        seconds[name] = seconds_per_step(build(c, state, KINDS[name]), batch, args.steps, args.warmup)
        # Every path trains only the word table and output bias over a frozen body and head.
        flops[name] = step_flops(c, KINDS[name], args.batch, args.seq_len, m).total
    print(f"{'path':<9} {'s/step':>8} {'GFLOP/step':>11} {'GFLOP/s':>8}")
    for name in paths:
        print(f"{name:<9} {seconds[name]:8.3f} {flops[name] / 1e9:11.1f} {flops[name] / seconds[name] / 1e9:8.1f}")
    if "minipost" in paths:
        print(f"MiniPost (k={k} + {args.minipost_top} top): analytic FLOP ratio "
              f"{flops['full'] / flops['minipost']:.2f}, adapt step speedup minipost/full: "
              f"{seconds['full'] / seconds['minipost']:.2f}")
    print(f"analytic FLOP ratio full/mini: {flops['full'] / flops['mini']:.2f}")
    print(f"adapt step speedup mini/full: {seconds['full'] / seconds['mini']:.2f}")


if __name__ == "__main__":
    main()
