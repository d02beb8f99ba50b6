"""Peak memory and time of the MLM head + loss, forward and backward: fused vs Hugging Face.

The adaptation step's output layer for XLM-R: 250,002 vocabulary, hidden 768, 4,096 masked
positions (a batch of 64 x 512 tokens at 12.5% masking), the weight trainable (tied to the
embeddings being learned) and the hidden states needing a gradient (it flows down to them).

  hf     logits = F.linear(h, W, b); F.cross_entropy(logits, labels), then backward. The logits
         are dropped as soon as the loss exists, which is kinder than Hugging Face's model:
         MaskedLMOutput keeps `logits` alive through backward (4.1 GB more at full size), so
         the ratio printed here understates the saving.
  fused  ds_minimodel.kernels.masked_lm_loss(impl="auto"): the Triton kernels on CUDA, the
         vocabulary-chunked PyTorch path on CPU (strategy "vocab": the logits GEMM is redone in
         backward, 4 vocabulary-sized GEMMs where Hugging Face does 3).
  rows   (CPU only) the PyTorch path's other strategy, strategy="rows": row blocks keep their
         [R, V] logits and compute the gradients in forward, 3 GEMMs (see kernels/chunked.py).

Memory is the peak of tensor memory allocated during forward + backward above what was live
before (inputs excluded; the gradients, which both produce, included): on CUDA
`torch.cuda.max_memory_allocated`, on CPU the allocation events of `torch.profiler` (see
`ds_minimodel/kernels/profiling.py`; tracemalloc does not see ATen). `--rss` adds the OS view:
each variant once more in a fresh subprocess, peak resident set size minus the size after the
inputs were made. Time is the best of `--repeats` runs per variant, wall clock, forward +
backward; the variants are interleaved so that load from other processes hits all alike. The
first run of each is also the memory run (the profiler's cost is a few hundred events, nothing
next to multi-second GEMMs; on CUDA there is an extra untimed warm-up run for Triton's JIT).

    python bench/head_memory.py                  # full size on CPU (a few minutes)
    python bench/head_memory.py --quick          # 4,096 positions, 32,000 vocabulary
    python bench/head_memory.py --device cuda    # the Triton kernels

The last line is `head peak memory ratio fused/hf: X.XX` (goal: at most 0.25, and not slower),
for the default fused path.
"""

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ds_minimodel import kernels
from ds_minimodel.kernels import chunked
from ds_minimodel.kernels.profiling import peak_allocated_bytes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(args, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[args.dtype]
    # Scales of a trained XLM-R head: unit-variance LayerNorm output, ~0.05 weights. Filled in
    # place (no temporaries), so the process's peak RSS so far is its current RSS.
    def normal(*shape, std):
        return torch.empty(*shape).normal_(std=std, generator=g).to(device, dtype)

    hidden = normal(args.positions, args.hidden, std=1.0)
    weight = normal(args.vocab, args.hidden, std=0.05)
    bias = normal(args.vocab, std=0.1)
    labels = torch.randint(0, args.vocab, (args.positions,), generator=g).to(device)
    for t in (hidden, weight, bias):
        t.requires_grad_(True)
    return hidden, weight, bias, labels


def hf_step(hidden, weight, bias, labels):
    logits = F.linear(hidden, weight, bias)
    loss = F.cross_entropy(logits.float(), labels)
    del logits
    loss.backward()
    return loss.detach()


def fused_step(hidden, weight, bias, labels):
    loss = kernels.masked_lm_loss(hidden, weight, bias, labels, impl="auto")
    loss.backward()
    return loss.detach()


def rows_step(hidden, weight, bias, labels):
    loss = kernels.masked_lm_loss(hidden, weight, bias, labels, impl="torch", strategy="rows")
    loss.backward()
    return loss.detach()


VARIANTS = {"hf": hf_step, "fused": fused_step, "rows": rows_step}


def _proc_status_bytes(key):
    # VmHWM is the peak RSS of this address space (reset by exec, unlike ru_maxrss, which a
    # child inherits from the parent it was forked from).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(step, inputs, device):
    for t in inputs[:3]:
        t.grad = None
    sync(device)
    start = time.perf_counter()
    loss = step(*inputs)
    sync(device)
    return time.perf_counter() - start, loss


def rss_child(args):
    """--rss-child: one variant in this fresh process; prints its peak RSS growth as JSON."""
    device = torch.device(args.device)
    inputs = make_inputs(args, device)
    base = _proc_status_bytes("VmRSS")
    VARIANTS[args.rss_child](*inputs)
    print(json.dumps({"rss_peak_bytes": _proc_status_bytes("VmHWM") - base}))


def measure_rss(args, variant):
    cmd = [sys.executable, __file__, "--rss-child", variant, "--device", args.device,
           "--positions", str(args.positions), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_peak_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="4,096 positions, 32,000 vocabulary")
    ap.add_argument("--positions", type=int, default=None, help="masked positions M (default 4096)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary V (default 250002)")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=None, help="runs per variant (default 2 CPU, 10 CUDA)")
    ap.add_argument("--rss", action="store_true", help="also peak RSS per variant in a fresh subprocess (CPU)")
    ap.add_argument("--rss-child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.positions = args.positions or 4096
    args.vocab = args.vocab or (32000 if args.quick else 250002)
    if args.rss_child:
        return rss_child(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    repeats = args.repeats or (10 if device.type == "cuda" else 2)
    torch.manual_seed(0)
    variants = {k: v for k, v in VARIANTS.items() if k != "rows" or device.type == "cpu"}
    # The subprocesses first, while this process holds nothing big.
    rss = {name: measure_rss(args, name) for name in variants} if args.rss else {}

    inputs = make_inputs(args, device)
    impl = kernels.resolve_impl("auto", inputs[0])
    chunk = chunked.vocab_chunk_columns(args.positions, args.vocab)
    print(f"MLM head + loss, forward + backward: M={args.positions} masked positions, d={args.hidden}, "
          f"V={args.vocab}, {args.dtype}, device={device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f" ({torch.get_num_threads()} threads)"))
    print(f"fused = kernels.masked_lm_loss(impl='auto') -> '{impl}'"
          + (f", {chunk} vocabulary columns per chunk" if impl == "torch" else "")
          + (f"; rows = strategy 'rows', {chunked.row_block_rows(args.positions, args.vocab)} rows per block"
             if "rows" in variants else ""))

    peaks, times, losses, grads = {}, {k: [] for k in variants}, {}, {}
    for name, step in variants.items():  # first run: memory, and timed
        if device.type == "cuda":
            run_once(step, inputs, device)  # Triton JIT, cuBLAS handles: not part of either number
        for t in inputs[:3]:
            t.grad = None
        start = time.perf_counter()
        peaks[name], losses[name] = peak_allocated_bytes(lambda s=step: s(*inputs), device)
        times[name].append(time.perf_counter() - start)
        # Keep the reference gradients; of the others only their error against them.
        if name == "hf":
            grads[name] = [t.grad.detach().clone() for t in inputs[:3]]
        else:
            grads[name] = [((t.grad.float() - r.float()).abs().max() / r.float().abs().max()).item()
                           for t, r in zip(inputs[:3], grads["hf"])]
    del grads["hf"]
    for t in inputs[:3]:
        t.grad = None
    for _ in range(repeats - 1):
        for name, step in variants.items():
            times[name].append(run_once(step, inputs, device)[0])

    mib = 2**20
    header = f"{'variant':<8}{'peak alloc MiB':>16}{'best s':>10}{'runs s':>26}"
    if rss:
        header += f"{'peak RSS MiB':>15}"
    print(header)
    for name in variants:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        row = f"{name:<8}{peaks[name] / mib:>16.0f}{min(times[name]):>10.3f}{runs:>26}"
        if rss:
            row += f"{rss[name] / mib:>15.0f}"
        print(row)
    for name, errs in grads.items():
        print(f"{name}: loss {losses[name].item():.6f} (hf {losses['hf'].item():.6f}); max |grad - hf grad| / "
              f"max |hf grad| for hidden, weight, bias: {', '.join(f'{e:.1e}' for e in errs)}")
    for name in grads:
        ratio = min(times[name]) / min(times["hf"])
        print(f"{name}/hf: time {ratio:.2f} ({'not slower' if ratio <= 1 else 'slower'}), "
              f"peak alloc {peaks[name] / peaks['hf']:.2f}"
              + (f", peak RSS {rss[name] / rss['hf']:.2f}" if rss else ""))
    print(f"head peak memory ratio fused/hf: {peaks['fused'] / peaks['hf']:.2f}")


if __name__ == "__main__":
    main()
