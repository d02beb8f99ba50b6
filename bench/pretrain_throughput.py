"""MiniJoint pretraining throughput: our MLMEncoder against Hugging Face XLMRobertaForMaskedLM.

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python bench/pretrain_throughput.py [--quick]

Threads: on a CPU shared with other jobs use OMP_NUM_THREADS=1 (or --threads 1). With more
OpenMP threads than free cores, every parallel region waits for a descheduled thread; that
hurts the many medium-sized ops of our chunked head far more than Hugging Face's few huge
GEMMs and makes the ratio measure the machine's load instead of the code.

Both models do the same MiniJoint step (loss = final-head MLM + w * mid-head MLM at layer k)
with the same shapes, XLM-R's 250,002-token vocabulary, the same initialisation seed, the same
batches (identical input_ids / labels per step, 15% BERT-style masking) and the same DeepSpeed
engine: one resolved DeepSpeed config, torch AdamW through `engine.build_engine` (same
settings, same parameter groups, gradient clipping from the config). Both engines live in this
process; after each side's untimed warm-up, their timed steps alternate (ours then hf, then hf
then ours, ...), so drift in the machine's speed hits both alike, and each side reports the
median of its timed steps (at least 5). A timed step is forward + backward + optimizer step,
`time.perf_counter`; each side keeps its own dropout stream.

The Hugging Face side is what a transformers user would write: `XLMRobertaForMaskedLM(labels=)`
for the final head, `output_hidden_states=True`, `hidden_states[k]` through a second
`XLMRobertaLMHead` (its own dense + layer norm + bias, decoder weight shared with the word
embeddings) over all positions, and `CrossEntropyLoss` against the -100 labels.

Default shapes: XLM-R-base scaled to run in a few minutes on a 2-core CPU. XLM-R's full
vocabulary (250,002, tied), XLM-R-base's head size (64) and FFN ratio (4x), its layer norm
eps, learned positions (514) and single token type, but half its width and a third of its
depth: hidden 384, 6 heads, FFN 1536, 4 layers (mid head after layer 1 = L/4), sequence 128,
micro-batch 8 (1,024 tokens per step), 1 warm-up + 5 timed steps per side. Any of them can be set
(`--hidden 768 --heads 12 --intermediate 3072` is XLM-R-base's width: ~2x the time per
step). `--quick` is a smoke test (hidden 64, 2 layers, 4 x 32 tokens, still the real
vocabulary; well under a minute): with so few tokens per step the optimizer step over the
250,002 x d embedding, which both sides pay alike, weighs more, so its ratio is lower. The
exact shapes are printed.

Why ours is faster: with V = 250,002 the two MLM heads dominate the step, not the body. Hugging
Face computes [B*T x V] logits for every position, twice per step (final and mid head), keeps
them for backward and runs three [B*T x d x V] GEMMs per head. Ours gathers the ~15% masked
positions first and runs the head + cross-entropy on those M rows only, walking the vocabulary
in chunks (`ds_minimodel.kernels.masked_lm_loss`), so the [B*T x V] (or even [M x V]) logits
never exist: about 0.15 x 4/3 (one recompute GEMM in backward) = 0.2 of Hugging Face's head
FLOPs, and far less memory. The body and the optimizer step (AdamW over the same parameters,
dominated by the tied 250,002 x d embedding) cost the same on both sides, which bounds the
ratio from above; on CPU the thin [M x d] x [d x chunk] GEMMs also run at a lower rate than
Hugging Face's [B*T x d] x [d x V] ones. So the ratio grows with the tokens per step (real
pretraining batches are far larger than these).

The last line is `pretrain throughput ratio ours/hf: X.XX`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init from a config: nothing is downloaded

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ds_minimodel.config import ModelConfig, OptimConfig  # noqa: E402
from ds_minimodel.data.masking import mask_tokens  # noqa: E402
from ds_minimodel.model import IGNORE_INDEX, MLMEncoder  # noqa: E402
from ds_minimodel.training import engine as ds  # noqa: E402  (imports deepspeed)

# XLM-R's special ids: <s> 0, <pad> 1, </s> 2, <unk> 3; <mask> is the last id (250,001).
BOS, PAD, EOS, UNK = 0, 1, 2, 3
XLMR_VOCAB = 250_002

MIN_TIMED_STEPS = 5
DEFAULTS = dict(layers=4, hidden=384, heads=6, intermediate=1536, vocab=XLMR_VOCAB, seq_len=128,
                micro_batch=8, steps=5, warmup=1)
# --quick: tiny body, real vocabulary (the head is what the comparison is about); < 1 minute.
QUICK = dict(layers=2, hidden=64, heads=2, intermediate=256, vocab=XLMR_VOCAB, seq_len=32,
             micro_batch=4, steps=5, warmup=1)


class HFMiniJoint(nn.Module):
    """XLMRobertaForMaskedLM + a mid-layer MLM head, written the way a transformers user would."""

    def __init__(self, config, mid_layer: int, mid_weight: float):
        super().__init__()
        from transformers import XLMRobertaForMaskedLM
        from transformers.models.xlm_roberta.modeling_xlm_roberta import (
            XLMRobertaLMHead,
        )

        self.mlm = XLMRobertaForMaskedLM(config)
        self.mid_layer, self.mid_weight = mid_layer, mid_weight
        self.mid_head = XLMRobertaLMHead(config)
        # Tie as HF ties lm_head: decoder.weight is the word-embedding Parameter, decoder.bias
        # the head's own bias.
        self.mid_head.decoder.weight = self.mlm.roberta.embeddings.word_embeddings.weight
        self.mid_head.decoder.bias = self.mid_head.bias
        self.loss_fct = nn.CrossEntropyLoss()  # ignore_index=-100

    def forward(self, input_ids, labels):
        out = self.mlm(input_ids=input_ids, labels=labels, output_hidden_states=True)
        mid_logits = self.mid_head(out.hidden_states[self.mid_layer])  # [B, T, V]: all positions
        mid_loss = self.loss_fct(mid_logits.view(-1, mid_logits.shape[-1]), labels.view(-1))
        return {"loss": out.loss + self.mid_weight * mid_loss, "final_loss": out.loss, "mid_loss": mid_loss}


def build_ours(a, max_positions):
    cfg = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
                      intermediate_size=a.intermediate, max_positions=max_positions,
                      mini_depth=a.mid_layer, mid_head_weight=a.mid_weight, kernels=a.kernels)
    problems = cfg.problems()
    if problems:
        raise SystemExit("bad shape: " + "; ".join(problems))
    return MLMEncoder(cfg)


def build_hf(a, max_positions):
    from transformers import XLMRobertaConfig

    # XLM-R's own settings where XLMRobertaConfig's defaults are BERT's (eps, positions, types).
    config = XLMRobertaConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                              num_attention_heads=a.heads, intermediate_size=a.intermediate,
                              max_position_embeddings=max_positions, type_vocab_size=1, layer_norm_eps=1e-5,
                              pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, hidden_dropout_prob=0.1,
                              attention_probs_dropout_prob=0.1, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"  # what ours uses too
    return HFMiniJoint(config, a.mid_layer, a.mid_weight)


def make_batches(a, n):
    """n micro-batches of <s> random tokens </s>, masked 15% as in pretraining (80/10/10)."""
    gen = torch.Generator().manual_seed(a.seed)
    mask_id = a.vocab - 1
    batches = []
    for i in range(n):
        ids = torch.randint(UNK + 1, mask_id, (a.micro_batch, a.seq_len), generator=gen)
        ids[:, 0], ids[:, -1] = BOS, EOS
        seeds = [a.seed * 1_000_003 + i * a.micro_batch + r for r in range(a.micro_batch)]
        inputs, labels = mask_tokens(ids, seeds, a.mask_prob, mask_id, a.vocab, (BOS, PAD, EOS, UNK, mask_id))
        batches.append((inputs, labels))
    return batches


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def unique_params(model) -> int:
    """Parameters counted once (tied ones too), full size also when ZeRO-3 has partitioned them."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in {id(p): p for p in model.parameters()}.values())


class Side:
    """One model's engine, its position in the (shared) batch list and its own dropout stream.

    Both sides stay alive during timing so that their steps can alternate: a machine that speeds
    up or slows down over the run (thermal state, other jobs, caches) then affects both alike.
    Each side swaps in its own RNG state around its steps, so it sees the dropout stream it
    would see alone.
    """

    def __init__(self, name, build, a, ds_config, optim, batches, ga, zero_init):
        self.name, self.a, self.batches, self.ga = name, a, batches, ga
        self.acc = ds.accelerator()
        rss_before = _rss_gib()
        can_reset = _reset_peak_rss()
        t0 = time.perf_counter()
        torch.manual_seed(a.seed)  # same init stream for both models
        # zero_init: build under `deepspeed.zero.Init` when the config is ZeRO-3 (ours). Hugging Face's
        # post-init weight initialisation writes into parameters that zero.Init has already
        # partitioned, so its model is built whole and partitioned by `deepspeed.initialize` instead
        # (same engine, same partitioning during the timed steps).
        with ds.model_init_context(ds_config) if zero_init else contextlib.nullcontext():
            model = build()
        self.params = unique_params(model)
        self.engine = ds.build_engine(model, ds_config, optim, a.warmup + a.steps)
        self.build_s = time.perf_counter() - t0
        self.rng = torch.Generator().manual_seed(a.seed + 1).get_state()  # same dropout stream
        self.next_batch = 0
        self.step_times, self.parts, self.losses = [], [], []
        log(f"  [{name}] built and wrapped by deepspeed.initialize in {self.build_s:.1f} s")
        for i in range(a.warmup):
            dt, split, loss = self.step()
            log(f"  [{name}] warm-up step {i + 1}/{a.warmup}: {dt:.2f} s (fwd {split[0]:.2f}, bwd {split[1]:.2f}, "
                f"opt {split[2]:.2f}), loss {loss:.3f}")
        # Growth of the process's high-water mark over this side's build and warm-up (the other
        # side, built earlier, stays resident and is not counted again).
        peak = _peak_rss_gib() if can_reset else None
        self.peak = None if peak is None or rss_before is None else peak - rss_before

    def step(self):
        """One optimizer step (ga micro-batches): wall-clock, [fwd, bwd, opt] split, loss."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        dev, acc = self.engine.device, self.acc
        acc.synchronize()
        t = time.perf_counter()
        split = [0.0, 0.0, 0.0]  # forward, backward, optimizer step (synchronised: cheap on CPU)
        for _ in range(self.ga):
            ids, labels = self.batches[self.next_batch]
            self.next_batch += 1
            ids, labels = ids.to(dev), labels.to(dev)
            t1 = time.perf_counter()
            out = self.engine(ids, labels=labels)
            acc.synchronize()
            t2 = time.perf_counter()
            self.engine.backward(out["loss"])
            acc.synchronize()
            t3 = time.perf_counter()
            self.engine.step()
            acc.synchronize()
            t4 = time.perf_counter()
            split = [split[0] + t2 - t1, split[1] + t3 - t2, split[2] + t4 - t3]
        loss = out["loss"].item()  # a host sync, inside the timed region on purpose
        acc.synchronize()
        dt = time.perf_counter() - t
        self.rng = torch.get_rng_state()
        torch.set_rng_state(saved)
        return dt, split, loss

    def timed_step(self, index: int) -> None:
        dt, split, loss = self.step()
        self.step_times.append(dt)
        self.parts.append(split)
        self.losses.append(loss)
        log(f"  [{self.name}] timed step {index + 1}/{self.a.steps}: {dt:.2f} s (fwd {split[0]:.2f}, "
            f"bwd {split[1]:.2f}, opt {split[2]:.2f}), loss {loss:.3f}")

    def row(self, world: int) -> dict:
        median = statistics.median(self.step_times)
        tokens = self.ga * self.a.micro_batch * self.a.seq_len * world  # global tokens per step
        parts = [statistics.median(p[i] for p in self.parts) for i in range(3)]
        return dict(name=self.name, params=self.params, build_s=self.build_s, step_s=median,
                    min_step_s=min(self.step_times), max_step_s=max(self.step_times), fwd_s=parts[0],
                    bwd_s=parts[1], opt_s=parts[2], tok_s=tokens / median,
                    loss=sum(self.losses) / len(self.losses), peak=self.peak)


def log(msg):
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(msg, flush=True)


def _rss_gib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def timing_order(steps: int, hf_first: bool = False) -> list[tuple[str, str]]:
    """Which side times its step first in each round: alternating (ours-hf, hf-ours, ...; hf
    first in the first round with --hf-first), so a machine that speeds up or slows down during
    the run shifts both sides' medians alike."""
    return [("hf", "ours") if (i % 2 == 0) == hf_first else ("ours", "hf") for i in range(steps)]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--vocab", type=int, help=f"default {XLMR_VOCAB} (XLM-R's)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--steps", type=int, help=f"timed optimizer steps per side (at least {MIN_TIMED_STEPS})")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps first")
    p.add_argument("--mid-layer", type=int, help="mid head after this layer (default layers // 4, at least 1)")
    p.add_argument("--mid-weight", type=float, default=1.0)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--deepspeed", default="ds_configs/z0.json", help="DeepSpeed JSON, shared by both models")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--kernels", default="auto", help="our head/embedding kernels: auto|torch|off|triton")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: OMP_NUM_THREADS, else torch's)")
    p.add_argument("--hf-first", action="store_true", help="Hugging Face goes first in the first round (order check)")
    p.add_argument("--quick", action="store_true", help="tiny body, real vocabulary: under a minute")
    a = p.parse_args(argv)
    for key, value in (QUICK if a.quick else DEFAULTS).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.mid_layer is None:
        a.mid_layer = max(1, a.layers // 4)
    if a.layers < 2 or not 1 <= a.mid_layer < a.layers:
        p.error(f"--mid-layer must be in 1..{a.layers - 1} (and --layers >= 2)")
    if a.seq_len < 3 or a.micro_batch < 1 or a.warmup < 0:
        p.error("--seq-len >= 3, --micro-batch >= 1, --warmup >= 0")
    if a.steps < MIN_TIMED_STEPS:
        p.error(f"--steps must be >= {MIN_TIMED_STEPS}: the median of fewer timed steps per side is noise")
    return a


def main(argv=None) -> float:
    a = parse_args(argv)
    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    threads = a.threads or (int(env_threads) if env_threads.isdigit() else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    ds_path = a.deepspeed
    if not os.path.isabs(ds_path) and not os.path.exists(ds_path):
        ds_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ds_path)
    t0 = time.perf_counter()
    dist = ds.init_distributed()  # a world of one under plain `python`
    init_s = time.perf_counter() - t0
    ds_config = ds.resolve_ds_config(ds.read_ds_config(ds_path), dist.world_size, micro_batch_size=a.micro_batch,
                                     dtype=a.dtype, grad_clip=OptimConfig().grad_clip,
                                     source=f"DeepSpeed config {a.deepspeed}")
    ga = ds_config["gradient_accumulation_steps"]
    # Same AdamW settings for both; constant LR so that neither side's step depends on a schedule.
    optim = OptimConfig(warmup_steps=0, schedule="constant")
    max_positions = max(514, a.seq_len + PAD + 1)
    batches = make_batches(a, (a.warmup + a.steps) * ga)
    frac = sum(int(l.ne(IGNORE_INDEX).sum()) for _, l in batches) / sum(l.numel() for _, l in batches)

    if dist.is_main:
        print(f"shapes: layers {a.layers}, hidden {a.hidden}, heads {a.heads}, intermediate {a.intermediate}, "
              f"vocab {a.vocab:,}, mid head after layer {a.mid_layer} (weight {a.mid_weight}), "
              f"seq {a.seq_len}, micro-batch {a.micro_batch} x accum {ga} x world {dist.world_size}"
              f"{' (--quick)' if a.quick else ''}")
        print(f"run: {a.warmup} warm-up + {a.steps} timed steps, {a.dtype}, DeepSpeed {a.deepspeed} "
              f"(ZeRO-{ds.zero_stage(ds_config)}), torch AdamW lr {optim.lr} wd {optim.weight_decay}, "
              f"grad clip {ds_config['gradient_clipping']}, {torch.get_num_threads()} threads, "
              f"masked {frac:.1%} of tokens, our kernels={a.kernels!r}; init_distributed took {init_s:.1f} s",
              flush=True)

    ours = Side("ours (MLMEncoder)", lambda: build_ours(a, max_positions), a, ds_config, optim, batches, ga,
                zero_init=True)
    hf = Side("hf (XLMRobertaForMaskedLM)", lambda: build_hf(a, max_positions), a, ds_config, optim, batches, ga,
              zero_init=False)
    sides = {"ours": ours, "hf": hf}
    for i, (first, second) in enumerate(timing_order(a.steps, a.hf_first)):
        sides[first].timed_step(i)
        sides[second].timed_step(i)
    rows = [ours.row(dist.world_size), hf.row(dist.world_size)]
    ratio = rows[0]["tok_s"] / rows[1]["tok_s"]
    if dist.is_main:
        print(f"{'model':<28}{'params':>13}{'median s':>9}{'min s':>7}{'max s':>7}{'fwd s':>7}{'bwd s':>7}"
              f"{'opt s':>7}{'tokens/s':>10}{'loss':>8}{'peak RSS +':>11}")
        for r in rows:
            peak = f"{r['peak']:.2f} GiB" if r["peak"] is not None else "n/a"
            print(f"{r['name']:<28}{r['params']:>13,}{r['step_s']:>9.2f}{r['min_step_s']:>7.2f}{r['max_step_s']:>7.2f}"
                  f"{r['fwd_s']:>7.2f}{r['bwd_s']:>7.2f}{r['opt_s']:>7.2f}{r['tok_s']:>10.1f}{r['loss']:>8.3f}"
                  f"{peak:>11}")
        print(f"(median s: the median of {a.steps} timed steps per side, taken in alternating order; fwd/bwd/opt "
              "are medians of each part; tokens/s = micro-batch x seq x accum x world / median s; peak RSS +: "
              "growth of the high-water mark over that side's build and warm-up)")
        print(f"pretrain throughput ratio ours/hf: {ratio:.2f}", flush=True)
    ds.shutdown()
    return ratio


if __name__ == "__main__":
    main()
