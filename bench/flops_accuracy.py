"""How exact is ds_minimodel.method.flops? One real step of every step kind at a few shapes, counted by
torch's FlopCounterMode, against the analytic count (and, for scale, the 6N rule and DeepSpeed's
flops-profiler convention, which are estimates, not counts).

    OMP_NUM_THREADS=1 python bench/flops_accuracy.py

Models use explicit attention and the plain MLM head (what FlopCounterMode can see on CPU).
The MiniPost kinds run the mini-model of k frozen + 1 new top layer, adapt_minijoint the MiniJoint
mini-model (layers 1..k + the mid head), adapt_full the full model without its mid head. The last line is
`flops counter max relative error vs FlopCounterMode: X` (0 when every count is exact).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from ds_minimodel.config import ModelConfig
from ds_minimodel.method import flops, flops_check

# (name, model shape, (batch, seq, masked)): distinct dimensions so that no two terms coincide.
SHAPES = [
    ("tiny", dict(vocab_size=301, hidden_size=48, num_layers=4, num_heads=4, intermediate_size=96,
                  mini_depth=2), (3, 19, 7)),
    ("narrow-deep", dict(vocab_size=1009, hidden_size=64, num_layers=8, num_heads=8, intermediate_size=256,
                         mini_depth=2), (2, 33, 10)),
    ("wide", dict(vocab_size=2003, hidden_size=96, num_layers=6, num_heads=6, intermediate_size=384,
                  mini_depth=3), (2, 64, 0)),
]


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="first shape only")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    shapes = SHAPES[:1] if args.quick else SHAPES
    print(f"{'shape':<12}{'step':<16}{'ours':>14}{'FlopCounterMode':>17}{'rel err':>10}"
          f"{'6N rule':>10}{'DS prof.':>10}{'ZeRO-3':>10}{'s':>6}")
    worst = 0.0
    for name, shape, (B, T, M) in shapes:
        full = ModelConfig(max_positions=T + 2, attention="explicit", kernels="off", **shape)
        k = full.mini_depth
        for kind in flops.STEP_KINDS:
            cfg = {"minipost_top": lambda: flops.minipost_config(full, k, 1),
                   "adapt_minipost": lambda: flops.minipost_config(full, k, 1),
                   "adapt_minijoint": lambda: flops.minijoint_config(full),
                   "adapt_full": lambda: dataclasses.replace(full, mini_depth=None)}.get(kind, lambda: full)()
            kw = dict(mini_depth=k if kind == "minipost_top" else None)
            t0 = time.perf_counter()
            fwd, bwd = flops_check.measure_step_flops(cfg, kind, B, T, M, **kw)
            ours = flops.step_flops(cfg, kind, B, T, M, **kw)
            counted = fwd + bwd
            # Forward and backward separately, so that errors of opposite sign cannot cancel.
            err = max(abs(ours.forward - fwd) / max(fwd, 1), abs(ours.backward - bwd) / max(bwd, 1))
            worst = max(worst, err)
            six_n = flops_check.six_n_rule(cfg, B * T)
            ds = flops_check.deepspeed_profiler_estimate(cfg, kind, B, T, M, **kw).step
            ds3 = flops_check.deepspeed_profiler_estimate(cfg, kind, B, T, M, zero3=True, **kw).step
            rel = [f"{(x - ours.total) / ours.total:+.0%}" for x in (six_n, ds, ds3)]
            print(f"{name:<12}{kind:<16}{ours.total:>14,}{counted:>17,}{err:>10.2e}"
                  + "".join(f"{r:>10}" for r in rel) + f"{time.perf_counter() - t0:>6.1f}")
    print("(6N rule / DS prof. / ZeRO-3: those conventions' step FLOPs relative to ours, not counting errors)")
    print(f"flops counter max relative error vs FlopCounterMode: {worst:.3g}")
    return worst


if __name__ == "__main__":
    main()
