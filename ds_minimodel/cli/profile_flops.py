"""FLOPs of one step of a pipeline step kind, per component, against the usual rules of thumb.

    python launchers/profile_flops.py --config configs/pretrain-xlmr-base.yaml --step adapt_minijoint
    python launchers/profile_flops.py --config configs/pretrain-xlmr-base.yaml --step adapt_full \
        --batch-size 8 --seq-len 512 --mask-prob 0.15 --check --check-scale small

Prints forward / input-grad / weight-grad / total per component (per step and per token), then
the 6N rule (Hugging Face Trainer's floating_point_ops) and what DeepSpeed's flops profiler would
report (3 x its measured forward; ZeRO-3 counts linear layers twice), each with its relative error
against ours.

The config describes the full model; each step kind runs the model its step really runs (the
first line of the output names it): the MiniPost kinds (minipost_top, adapt_minipost) its MiniPost
mini-model, the bottom k layers (--mini-depth, default model.mini_depth) plus
--minipost-top-layers new ones; adapt_minijoint its MiniJoint mini-model (layers 1..k, the mid head as
the MLM head); adapt_full all layers and the final head. The pretraining kinds honour the config's
train.freeze patterns, as pretraining does.

--check runs one real step (forward + backward) under torch's FlopCounterMode and shows its counts
next to ours, plus DeepSpeed's FlopsProfiler on one forward (with and without the ZeRO-3 linear).
The checked model uses attention="explicit" and kernels="off": FlopCounterMode on CPU sees no
FLOPs in fused SDPA, and the explicit matmuls cost the same. --check-scale as-is (default) runs
the config's shapes as given (for XLM-R at 8 x 512 that is a full step of a 278M-parameter model on
the CPU: minutes and several GB); --check-scale small keeps the depth, k, and step kind but
shrinks width, vocabulary, batch and sequence (d=64, 4 heads, I=128, V=1009, B<=2, T<=32).
Every count is a polynomial in the shapes, so exact agreement at small, distinct dimensions
checks every term; the as-is check also covers the real sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from torch import nn

from ds_minimodel.cli.common import run_main
from ds_minimodel.config import ModelConfig, PretrainConfig, load_config
from ds_minimodel.errors import UserError
from ds_minimodel.method import flops, flops_check
from ds_minimodel.training import utilisation

SMALL = dict(hidden_size=64, num_heads=4, intermediate_size=128, vocab_size=1009)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config; its model: section is profiled")
    p.add_argument("--step", required=True, choices=flops.STEP_KINDS, help="step kind")
    p.add_argument("--batch-size", type=int, default=8, help="per-rank micro-batch (default 8)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--mask-prob", type=float, default=0.15,
                   help="MLM masking rate over non-special tokens (default 0.15)")
    p.add_argument("--num-classes", type=int, default=2, help="classes of the finetune task head")
    p.add_argument("--mini-depth", type=int, default=None,
                   help="MiniPost k (default model.mini_depth)")
    p.add_argument("--minipost-top-layers", type=int, default=1, help="MiniPost new top layers n (default 1)")
    p.add_argument("--recompute", action="store_true", help="activation checkpointing (hardware FLOPs)")
    p.add_argument("--recompute-fwd-factor", type=float, default=None,
                   help="DeepSpeed flops_profiler.recompute_fwd_factor (default: from --deepspeed, else 0)")
    p.add_argument("--step-time", type=float, default=None, help="measured seconds per step: print MFU/HFU")
    p.add_argument("--peak", default=None,
                   help="peak FLOP/s for MFU: a number or DEVICE:DTYPE such as H100:bf16 "
                        "(default: measured CPU fp32 peak)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--check", action="store_true", help="run one real step under FlopCounterMode")
    p.add_argument("--check-scale", choices=("as-is", "small"), default="as-is",
                   help="shapes of the --check run (see above)")
    p.add_argument("--deepspeed", default=None, metavar="JSON",
                   help="DeepSpeed config: its ZeRO stage and flops_profiler settings pick the estimate")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p


# --------------------------------------------------------------------------------------------
# DeepSpeed's FlopsProfiler, run for real on one forward.


class _StepForward(nn.Module):
    """The forward of one step as a single module, so the profiler's hooks see all of it."""

    def __init__(self, step: dict):
        super().__init__()
        self.model = step["model"]
        self.kind, self.input_ids, self.labels = step["kind"], step["input_ids"], step["labels"]

    def forward(self):
        if self.kind == "finetune":
            return self.model(self.input_ids)["logits"]
        if self.kind == "finetune_qa":
            return self.model(self.input_ids)["start_logits"]
        return self.model(self.input_ids, labels=self.labels, route=flops.ROUTE[self.kind])["loss"]


def run_deepspeed_profiler(step: dict, *, zero3_linear: bool = False) -> int:
    """FlopsProfiler.get_total_flops() for one forward of `step` (flops_check.build_step), through
    the engine (the only module that imports DeepSpeed). zero3_linear: as engine.profiler_flops."""
    from ds_minimodel.training import engine

    return engine.profiler_flops(_StepForward(step), zero3_linear=zero3_linear)


# --------------------------------------------------------------------------------------------


def _rel(other: float, ours: float) -> str:
    return f"{(other - ours) / ours:+.1%}" if ours else "n/a"


def _ds_settings(path: str | None) -> tuple[bool, float]:
    """(ZeRO-3 with memory_efficient_linear, flops_profiler.recompute_fwd_factor) of a DeepSpeed JSON."""
    if path is None:
        return False, 0.0
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"DeepSpeed config {path}: {e}") from None
    zero = cfg.get("zero_optimization", {}) or {}
    zero3 = int(zero.get("stage", 0)) == 3 and zero.get("memory_efficient_linear", True)
    return bool(zero3), float((cfg.get("flops_profiler", {}) or {}).get("recompute_fwd_factor", 0.0))


def _model_line(cfg: ModelConfig) -> str:
    return (f"L={cfg.num_layers} d={cfg.hidden_size} heads={cfg.num_heads} I={cfg.intermediate_size} "
            f"V={cfg.vocab_size} k={cfg.mini_depth} attention={cfg.attention}")


def _step_model(cfg: ModelConfig, args) -> tuple[ModelConfig, int | None, str]:
    """The model the step runs, MiniPost's k, and a description of that model."""
    if args.step == "adapt_minijoint":
        if cfg.mini_depth is None:
            raise UserError("step adapt_minijoint runs a MiniJoint mini-model: the config needs model.mini_depth")
        return flops.minijoint_config(cfg), None, f"MiniJoint mini-model: layers 1..{cfg.mini_depth} + mid head"
    if args.step == "adapt_full":
        return dataclasses.replace(cfg, mini_depth=None), None, "full model: all layers + final head"
    if args.step not in ("minipost_top", "adapt_minipost"):
        return cfg, None, ""
    k = args.mini_depth if args.mini_depth is not None else cfg.mini_depth
    if k is None:
        raise UserError(f"step {args.step}: set --mini-depth (or model.mini_depth)")
    mini = flops.minipost_config(cfg, k, args.minipost_top_layers)
    return mini, k, f"MiniPost mini-model: {k} frozen + {mini.num_layers - k} top layers"


def _check(cfg: ModelConfig, k: int | None, freeze: list, args, B: int, T: int, M: int) -> list[str]:
    if args.check_scale == "small":
        cfg = dataclasses.replace(cfg, **SMALL)
        B, T = min(B, 2), min(T, 32)
        M = max(1, flops.expected_masked(B, T, args.mask_prob))
    cfg = dataclasses.replace(cfg, attention="explicit", kernels="off")
    kw = dict(mini_depth=k, num_classes=args.num_classes)
    ours = flops.step_flops(cfg, args.step, B, T, M, freeze=freeze, **kw)
    step = flops_check.build_step(cfg, args.step, B, T, M, freeze=freeze, **kw)
    fwd, bwd = flops_check.count_step(**step)
    ok = fwd == ours.forward and bwd == ours.backward
    lines = ["", f"check ({args.check_scale}: {_model_line(cfg)}, batch {B} x seq {T}, {M} masked):",
             f"  {'':<34}{'ours':>18}{'FlopCounterMode':>18}",
             f"  {'forward':<34}{ours.forward:>18,}{fwd:>18,}",
             f"  {'backward':<34}{ours.backward:>18,}{bwd:>18,}",
             f"  {'total':<34}{ours.total:>18,}{fwd + bwd:>18,}",
             f"  {'match':<34}{'exact' if ok else 'MISMATCH':>18}"]
    for zero3 in (False, True):
        est = flops_check.deepspeed_profiler_estimate(cfg, args.step, B, T, M, zero3=zero3, **kw)
        real = run_deepspeed_profiler(step, zero3_linear=zero3)
        name = "DeepSpeed profiler forward" + (" (ZeRO-3)" if zero3 else "")
        lines.append(f"  {name:<34}{est.forward:>18,}{real:>18,}  (estimate vs FlopsProfiler run: "
                     f"{'exact' if est.forward == real else 'MISMATCH'})")
    if not ok:
        raise SystemExit("\n".join(lines + ["error: the analytic count does not match FlopCounterMode"]))
    return lines


def main(argv=None) -> None:
    args = parser().parse_args(argv)

    def body():
        loaded = load_config(PretrainConfig, args.config, args.overrides)
        full = loaded.model
        if full.vocab_size is None:
            raise UserError(f"{args.config}: model.vocab_size must be set to count FLOPs")
        B, T = args.batch_size, args.seq_len
        if B <= 0 or T <= 0:
            raise UserError("--batch-size and --seq-len must be positive")
        if T + full.pad_token_id + 1 > full.max_positions:
            raise UserError(f"--seq-len {T} does not fit model.max_positions {full.max_positions} "
                            f"(positions start at pad_token_id + 1)")
        if not 0.0 <= args.mask_prob < 1.0:
            raise UserError(f"--mask-prob must be in [0, 1), got {args.mask_prob}")
        cfg, k, what = _step_model(full, args)
        freeze = list(loaded.train.freeze) if args.step in ("pretrain", "pretrain_joint") else []
        M = flops.expected_masked(B, T, args.mask_prob)
        kw = dict(mini_depth=k, num_classes=args.num_classes)
        report = flops.step_flops(cfg, args.step, B, T, M, recompute=args.recompute, freeze=freeze, **kw)
        zero3, rff = _ds_settings(args.deepspeed)
        if args.recompute_fwd_factor is not None:
            rff = args.recompute_fwd_factor
        six_n = flops_check.six_n_rule(cfg, report.tokens)
        ds_est = flops_check.deepspeed_profiler_estimate(cfg, args.step, B, T, M, recompute_fwd_factor=rff, **kw)
        ds_z3 = flops_check.deepspeed_profiler_estimate(cfg, args.step, B, T, M, zero3=True, recompute_fwd_factor=rff,
                                                  **kw)
        if args.json:
            out = report.to_dict() | {
                "model": dataclasses.asdict(cfg), "six_n_rule": six_n,
                "deepspeed_profiler": dataclasses.asdict(ds_est), "deepspeed_profiler_zero3": dataclasses.asdict(ds_z3)}
            print(json.dumps(out, indent=2))
            return
        print(f"config {args.config}: {_model_line(cfg)}" + (f" ({what})" if what else "")
              + (f"; train.freeze {', '.join(freeze)}" if freeze else ""))
        print(report.table())
        tok = report.tokens
        print()
        print(f"{'estimate':<40}{'per step':>14}{'per token':>14}{'vs ours':>10}")
        rows = [("ours (FlopCounterMode convention)", report.total),
                ("6N rule (HF Trainer floating_point_ops)", six_n),
                ("6N as transformers 5.x reports XLM-R*", flops_check.six_n_rule(cfg, tok, hf_tied_decoder_quirk=True)),
                (f"DeepSpeed profiler ({3 + rff:g} x fwd)" if args.step != "eval" else "DeepSpeed profiler (fwd)",
                 ds_est.step),
                ("DeepSpeed profiler, ZeRO-3", ds_z3.step)]
        for name, v in rows:
            print(f"{name:<40}{flops.human(v):>14}{flops.human(v / tok):>14}{_rel(v, report.total):>10}")
        print("* XLMRobertaForMaskedLM yields the tied word table as lm_head.decoder.weight, so "
              "exclude_embeddings keeps it in N")
        if zero3:
            print(f"(--deepspeed {args.deepspeed} is ZeRO-3 with memory_efficient_linear: its profiler "
                  f"reports the ZeRO-3 row)")
        if args.step_time:
            peak = args.peak or utilisation.measure_cpu_peak(1.0)
            try:
                peak = float(peak)  # a number; otherwise DEVICE:DTYPE
            except ValueError:
                pass
            mfu = utilisation.mfu(report.total / args.step_time, peak)
            hfu = utilisation.hfu(report.hardware_total / args.step_time, peak)
            print(f"MFU {100 * mfu:.3g}%  HFU {100 * hfu:.3g}% (peak {flops.human(utilisation.resolve_peak(peak))}FLOP/s)")
        if args.check:
            print("\n".join(_check(cfg, k, freeze, args, B, T, M)))

    run_main(body)


if __name__ == "__main__":
    main()
