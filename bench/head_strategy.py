"""Which chunked-head strategy is faster on this device: "vocab" (logits recomputed in backward)
or "rows" (gradients computed in forward from kept row-block logits, one GEMM less).

    OMP_NUM_THREADS=2 python bench/head_strategy.py [--rows 154] [--hidden 768] [--vocab 250002 32000]

For each vocabulary, one head step as training runs it: `kernels.masked_lm_loss(impl="torch")`
forward + backward on M masked rows, the tied [V, d] table trainable (its gradient is the head's
d W, as the lookup then adds its rows in place: kernels/tied_grad.py). Both strategies run on the
same tensors, alternating (vocab, rows, rows, vocab, ...) after one untimed warm-up each, and
report the median of their timed repeats. Defaults: XLM-R base's width, M = 154 (15% of a
1,024-token micro-batch), V = 250,002 (pretraining, XLM-R's vocabulary) and 32,000 (a new
language's, step 2).

`kernels.AUTO_STRATEGY` (what model.head_strategy=auto uses) holds each device type's measured
winner; the last line says whether this device agrees with it:
`head strategy on <device>: rows/vocab time X.XX (auto picks <strategy>)`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ds_minimodel import kernels


def head_step(hidden, weight, bias, labels, strategy: str) -> float:
    for t in (hidden, weight, bias):
        t.grad = None
    sync = torch.cuda.synchronize if hidden.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    kernels.masked_lm_loss(hidden, weight, bias, labels, impl="torch", strategy=strategy).backward()
    sync()
    return time.perf_counter() - t0


def measure(rows: int, hidden: int, vocab: int, repeats: int, device: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hidden, generator=g).to(device).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(device).requires_grad_(True)
    b = torch.zeros(vocab, device=device, requires_grad=True)
    y = torch.randint(0, vocab, (rows,), generator=g).to(device)
    times: dict[str, list[float]] = {"vocab": [], "rows": []}
    for s in times:  # warm-up: allocator, page faults, thread pools
        head_step(h, w, b, y, s)
    for i in range(repeats):
        for s in (("vocab", "rows") if i % 2 == 0 else ("rows", "vocab")):
            times[s].append(head_step(h, w, b, y, s))
    return {s: statistics.median(t) for s, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=154, help="masked rows M")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, nargs="+", default=[250_002, 32_000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    device_type = torch.device(args.device).type
    print(f"device {args.device}, {torch.get_num_threads()} threads, M = {args.rows}, d = {args.hidden}, fp32; "
          f"median of {args.repeats} alternating repeats")
    ratios = []
    for vocab in args.vocab:
        t = measure(args.rows, args.hidden, vocab, args.repeats, args.device)
        ratios.append(t["rows"] / t["vocab"])
        print(f"V = {vocab:>7}: vocab {t['vocab']:.3f} s, rows {t['rows']:.3f} s, rows/vocab {ratios[-1]:.2f}")
    ratio = statistics.median(ratios)
    winner = "rows" if ratio < 1 else "vocab"
    auto = kernels.resolve_strategy("auto", device_type)
    if winner != auto:
        print(f"note: on this {device_type} device {winner} is faster, but kernels.AUTO_STRATEGY picks {auto}")
    print(f"head strategy on {device_type}: rows/vocab time {ratio:.2f} (auto picks {auto})")


if __name__ == "__main__":
    main()
