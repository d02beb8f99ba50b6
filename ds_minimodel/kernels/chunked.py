"""The masked-LM head + cross-entropy in plain PyTorch, chunk by chunk over the vocabulary.

Why: Hugging Face computes `logits = h @ W.T + b` for the whole vocabulary (250,002 columns for
XLM-R), then cross-entropy. For M masked positions that is an [M, V] fp32 tensor, and autograd
keeps two or three more of the same size (log-softmax output, its gradient, the logits'
gradient): 4,096 positions x 250,002 x 4 bytes = 4.1 GB each. Here the vocabulary is walked in
column chunks of C and only one [M, C] buffer exists at a time:

* forward: per chunk, logits into the buffer, then an online softmax (running row max `m` and
  running sum `s` of exp(z - m), rescaled when the max grows) gives logsumexp over all columns;
  the target logit is read out of whichever chunk holds the label.
* backward: per chunk, the logits are recomputed (one extra GEMM: the price of not storing
  them), turned in place into G = (softmax - onehot) * grad / M, and consumed at once:
  d hidden += G @ W_c, d W_c = G^T @ h, d b_c = column sums of G.

That costs one GEMM more than Hugging Face (4 [M, d] x [d, V]-sized products instead of 3):
on a GPU the memory-bound passes over [M, V] it removes pay for it, on a CPU they do not. So
there is a second strategy, `head_rows_eager` ("rows"): row blocks of R positions, each walked
over the vocabulary in chunks with the same online softmax, but keeping its [R, V] logits (R
from a byte budget, 512 MiB: R = 512 at V = 250,002) so that its gradients follow with no
recompute, in the forward pass itself (for grad_output = 1; backward only rescales). Three
GEMMs, memory O(R * V) instead of O(M * C), and the gradients live from forward to backward.
`masked_lm_loss(strategy=...)` picks; "vocab" is the default (the Triton kernels' algorithm,
and what `flops.py` books: the logits GEMM recomputed in backward).

The functions here are pure tensor code (no autograd); `functions.py` wraps them.
"""

import torch

# Bytes allowed for the one [M, C] fp32 logits buffer. 128 MiB gives C = 8,192 columns at
# M = 4,096 (31 chunks for XLM-R), big enough that each chunk's GEMM runs at full speed, small
# enough that the head's extra memory no longer grows with the vocabulary.
DEFAULT_CHUNK_BYTES = 128 * 2**20
MIN_CHUNK_COLUMNS = 1024  # below this the per-chunk GEMM is too thin to be efficient
# Bytes for the [R, V] logits of one row block on the "rows" strategy: R = 512 rows at
# V = 250,002. Fewer rows would re-read and re-write the [V, d] weight gradient more often (once
# per block: 1.5 GB of traffic at XLM-R size) with thinner GEMMs.
DEFAULT_ROW_BLOCK_BYTES = 512 * 2**20
MIN_ROW_BLOCK = 64
MAX_CHUNK_COLUMNS = 32768  # beyond this a bigger buffer buys no speed, only memory


def acc_dtype(dtype):
    """fp32 for bf16/fp16/fp32 inputs (the precision the issue asks for); fp64 stays fp64 so
    `gradcheck` sees the real arithmetic."""
    return torch.promote_types(dtype, torch.float32)


def vocab_chunk_columns(num_rows, vocab_size, chunk_bytes=DEFAULT_CHUNK_BYTES, elem_size=4):
    """Columns per vocabulary chunk so that one [num_rows, C] buffer fits in `chunk_bytes`.

    Rounded down to a multiple of 256 (aligned GEMM tiles), clamped to
    [MIN_CHUNK_COLUMNS, MAX_CHUNK_COLUMNS], and to a quarter of the vocabulary (rounded up to
    256) so that the buffer never exceeds a quarter of the full logits it replaces.
    """
    cols = chunk_bytes // max(1, num_rows * elem_size)
    quarter = -(-vocab_size // 4)  # ceil(V / 4) ...
    cols = min(cols, -(-quarter // 256) * 256)  # ... rounded up to a multiple of 256
    cols = max(MIN_CHUNK_COLUMNS, min(MAX_CHUNK_COLUMNS, (cols // 256) * 256))
    return max(1, min(cols, vocab_size))


def row_block_rows(num_rows, vocab_size, block_bytes=DEFAULT_ROW_BLOCK_BYTES, elem_size=4):
    """Rows per block for the "rows" strategy: [R, V] logits within `block_bytes`, R a multiple
    of 64 (at least 64), at most num_rows. As few blocks as the budget allows: every block reads
    the whole [V, d] weight twice and adds into the whole [V, d] gradient (at XLM-R's shapes
    1.5 GB of traffic each time), so a MiniJoint step at 154 masked rows per head ran 3 blocks a
    head under the earlier cap of a quarter of the rows, and runs 1 now."""
    rows = block_bytes // max(1, vocab_size * elem_size) // MIN_ROW_BLOCK * MIN_ROW_BLOCK
    return max(1, min(num_rows, max(MIN_ROW_BLOCK, rows)))


def _chunk_weight(weight, start, stop, dtype):
    # A view for fp32 weights (no copy); bf16 weights are upcast one chunk at a time, so there
    # is never a full fp32 copy of the tied matrix.
    w = weight[start:stop]
    return w if w.dtype == dtype else w.to(dtype)


def _chunk_logits(out, h, weight, bias, start, stop, dtype):
    """z = h @ W[start:stop].T + b[start:stop], written into the preallocated `out`."""
    w = _chunk_weight(weight, start, stop, dtype)
    if bias is None:
        torch.mm(h, w.t(), out=out)
    else:
        torch.addmm(bias[start:stop].to(dtype), h, w.t(), out=out)
    return w


def _label_cells(labels, start, stop):
    """(rows, columns inside the chunk) of the labels that fall in [start, stop)."""
    rows = ((labels >= start) & (labels < stop)).nonzero().squeeze(1)
    return rows, labels[rows] - start


def head_forward(hidden, weight, bias, labels, chunk):
    """Per-row logsumexp and target logit, in the accumulation dtype. hidden: [M, d]."""
    dtype = acc_dtype(hidden.dtype)
    h = hidden.to(dtype).contiguous()
    num_rows, vocab = h.shape[0], weight.shape[0]
    # One flat buffer reused by every chunk: no allocator traffic (and, on CPU, no fresh page
    # faults) per chunk. The last, narrower chunk views a prefix of it.
    buf = torch.empty(num_rows * min(chunk, vocab), dtype=dtype, device=h.device)
    run_max = torch.full((num_rows,), float("-inf"), dtype=dtype, device=h.device)
    run_sum = torch.zeros(num_rows, dtype=dtype, device=h.device)
    target = torch.zeros(num_rows, dtype=dtype, device=h.device)
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        z = buf[: num_rows * (stop - start)].view(num_rows, stop - start)
        _chunk_logits(z, h, weight, bias, start, stop, dtype)
        rows, cols = _label_cells(labels, start, stop)
        target[rows] = z[rows, cols]
        new_max = torch.maximum(run_max, z.amax(dim=1))
        # Rescale what was summed under the old max; exp(-inf) = 0 on the first chunk.
        run_sum.mul_(torch.exp(run_max - new_max))
        run_sum.add_(z.sub_(new_max[:, None]).exp_().sum(dim=1))
        run_max = new_max
    return run_max + run_sum.log(), target


def head_backward(hidden, weight, bias, labels, lse, grad_scale, chunk, need_hidden, need_weight,
                  need_bias, d_weight_into=None):
    """Gradients of sum_i (lse_i - z_i,y_i) * grad_scale with respect to hidden, weight, bias.

    grad_scale: 0-dim tensor (grad_output / M; a tensor so CUDA never syncs on it). Returns
    (d hidden, d weight, d bias) in the inputs' dtypes; None where not needed. With
    need_weight=False (frozen tied weight) the weight-gradient GEMM is skipped entirely.
    d_weight_into: an existing [V, d] gradient (another head's, `tied_grad.py`) that d weight is
    accumulated into, chunk by chunk, and returned as d weight (no second [V, d] tensor).
    """
    dtype = acc_dtype(hidden.dtype)
    h = hidden.to(dtype).contiguous()
    num_rows, vocab = h.shape[0], weight.shape[0]
    device = h.device
    lse = lse.to(dtype)
    scale = grad_scale.to(dtype)
    buf = torch.empty(num_rows * min(chunk, vocab), dtype=dtype, device=device)
    d_hidden = torch.zeros_like(h) if need_hidden else None
    # fp32 weights: each chunk's GEMM writes straight into its rows of the result. bf16: the
    # chunk is computed in fp32 and rounded once when copied in.
    accumulate = need_weight and d_weight_into is not None
    if accumulate:
        d_weight = d_weight_into
    else:
        d_weight = torch.empty(weight.shape, dtype=weight.dtype, device=device) if need_weight else None
    d_bias = torch.empty(vocab, dtype=dtype, device=device) if need_bias else None
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        g = buf[: num_rows * (stop - start)].view(num_rows, stop - start)
        w = _chunk_logits(g, h, weight, bias, start, stop, dtype)
        g.sub_(lse[:, None]).exp_()  # softmax of this chunk's columns
        rows, cols = _label_cells(labels, start, stop)
        g[rows, cols] -= 1.0  # rows are distinct, so plain indexing is exact
        g.mul_(scale)
        if need_hidden:
            d_hidden.addmm_(g, w)
        if need_weight:
            if d_weight.dtype != dtype:
                rows_w = (g.t() @ h).to(d_weight.dtype)
                d_weight[start:stop].add_(rows_w) if accumulate else d_weight[start:stop].copy_(rows_w)
            elif accumulate:
                d_weight[start:stop].addmm_(g.t(), h)
            else:
                torch.mm(g.t(), h, out=d_weight[start:stop])
        if need_bias:
            torch.sum(g, dim=0, out=d_bias[start:stop])
    return (
        None if d_hidden is None else d_hidden.to(hidden.dtype),
        d_weight,
        None if d_bias is None else d_bias.to(bias.dtype),
    )


def head_rows_eager(hidden, weight, bias, labels, rows, chunk, need_hidden, need_weight, need_bias):
    """The "rows" strategy: (per-row lse, target logits, d hidden, d weight, d bias), the
    gradients those of sum_i (lse_i - z_i,y_i) / M, i.e. of the mean loss for grad_output = 1.

    Gradients in the accumulation dtype (fp32 for bf16 inputs; the caller rounds them after
    scaling by the real grad_output), None where not needed.
    """
    dtype = acc_dtype(hidden.dtype)
    h = hidden.to(dtype).contiguous()
    num_rows, dim = h.shape
    vocab = weight.shape[0]
    device = h.device
    rows = min(rows, num_rows)
    chunk = min(chunk, vocab)
    logits = torch.empty(rows * vocab, dtype=dtype, device=device)
    scratch = torch.empty(rows * chunk, dtype=dtype, device=device)  # exp(z - max) of one chunk
    lse = torch.empty(num_rows, dtype=dtype, device=device)
    target = torch.empty(num_rows, dtype=dtype, device=device)
    d_hidden = torch.empty(num_rows, dim, dtype=dtype, device=device) if need_hidden else None
    d_weight = torch.zeros(vocab, dim, dtype=dtype, device=device) if need_weight else None
    d_bias = torch.zeros(vocab, dtype=dtype, device=device) if need_bias else None
    inv_m = 1.0 / num_rows
    for r0 in range(0, num_rows, rows):
        r1 = min(r0 + rows, num_rows)
        n = r1 - r0
        hr = h[r0:r1]
        z = logits[: n * vocab].view(n, vocab)
        run_max = torch.full((n,), float("-inf"), dtype=dtype, device=device)
        run_sum = torch.zeros(n, dtype=dtype, device=device)
        for c0 in range(0, vocab, chunk):
            c1 = min(c0 + chunk, vocab)
            zc = z[:, c0:c1]  # a column slice: the GEMM writes it in place (leading dim V)
            _chunk_logits(zc, hr, weight, bias, c0, c1, dtype)
            # Statistics while the chunk is still in cache; z itself is kept for the gradients.
            new_max = torch.maximum(run_max, zc.amax(dim=1))
            e = scratch[: n * (c1 - c0)].view(n, c1 - c0)
            torch.sub(zc, new_max[:, None], out=e)
            run_sum.mul_(torch.exp(run_max - new_max)).add_(e.exp_().sum(dim=1))
            run_max = new_max
        block_lse = run_max + run_sum.log()
        idx = torch.arange(n, device=device)
        lse[r0:r1] = block_lse
        target[r0:r1] = z[idx, labels[r0:r1]]
        z.sub_(block_lse[:, None]).exp_()
        z[idx, labels[r0:r1]] -= 1.0
        z.mul_(inv_m)  # G for grad_output = 1
        if need_hidden:  # per chunk: bf16 weights are upcast one chunk at a time
            dh = d_hidden[r0:r1].zero_()
            for c0 in range(0, vocab, chunk):
                c1 = min(c0 + chunk, vocab)
                dh.addmm_(z[:, c0:c1], _chunk_weight(weight, c0, c1, dtype))
        if need_weight:  # fp32 accumulator across row blocks (for bf16 weights: an fp32 copy)
            d_weight.addmm_(z.t(), hr)
        if need_bias:
            d_bias.add_(z.sum(dim=0))
    return lse, target, d_hidden, d_weight, d_bias
