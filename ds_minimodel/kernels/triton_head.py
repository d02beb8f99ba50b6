"""Fused masked-LM head + cross-entropy in Triton: logits exist only as on-chip tiles.

Forward (`lse_forward`): the grid is (row blocks) x (vocabulary splits). Each program walks
its split of the vocabulary in [BLOCK_M, BLOCK_V] tiles (tile = h_rows @ W_cols^T, a K-loop
over the hidden size), keeping an online softmax per row (running max and rescaled sum of
exponentials), and writes one (max, sum) pair per row and split. Splitting the vocabulary is
what fills the GPU when M is small (flash-decoding's trick); the few partials are merged on
the host in a deterministic logsumexp. The target logit is picked out of the one tile that
holds the label, so it is rounded exactly like the rest of the row.

Backward (`grad_backward`): one program per [BLOCK_M, BLOCK_V] tile. It recomputes the tile's
logits (the extra GEMM that buys O(M + V) memory instead of O(M * V)), forms
G = (exp(z - lse) - onehot) * grad / M in registers, and immediately consumes it:
d hidden[rows] += G @ W[cols], d W[cols] += G^T @ h[rows], d b[cols] += column sums of G,
each a K-loop over the hidden size with fp32 atomic adds (the design of Cut Cross-Entropy,
Wijmans et al. 2024). Atomic accumulation makes the gradients non-deterministic in their last
bits on GPU; the chunked PyTorch path is the deterministic alternative.

Precision: tiles accumulate in fp32 (fp64 for fp64 inputs, so gradcheck is meaningful);
G is cast to the input dtype before the two gradient GEMMs, as PyTorch's own bf16 linear
backward does, and the results accumulate in fp32 buffers that are rounded once at the end.
"""

import torch
import triton
import triton.language as tl

from ds_minimodel.kernels.chunked import acc_dtype
from ds_minimodel.kernels.triton_support import interpreting

# GPU tile sizes. 128 x 128 logits tiles with a 64-wide K step keep the fp32 tile at 64 KiB of
# registers over 8 warps; the backward tile is narrower in M because it also holds G and the
# [BLOCK_M, BLOCK_D] partial products. Overridable per call (the CPU tests use small, odd
# shapes so every masked tail runs).
FWD_BLOCKS = dict(block_m=128, block_v=128, block_d=64)
BWD_BLOCKS = dict(block_m=64, block_v=128, block_d=64)
# fp64 (gradcheck) tiles: the defaults would need 256 KiB of shared memory, more than any GPU has.
FP64_BLOCKS = dict(block_m=32, block_v=32, block_d=32)
GROUP_M = 8  # row blocks that walk the vocabulary together: W tiles are reused from L2


def _blocks(defaults, dtype, block_m, block_v, block_d):
    base = FP64_BLOCKS if dtype == torch.float64 else defaults
    return block_m or base["block_m"], block_v or base["block_v"], block_d or base["block_d"]


def _tl_dtype(dtype):
    return {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
            torch.float16: tl.float16}[dtype]


def _dot_dtype(dtype):
    # Tensor-core operand dtype. Triton's CPU interpreter multiplies bf16 tiles as their raw
    # uint16 bits, so there bf16/fp16 operands are widened to fp32 first: exact, and the same
    # products a bf16 MMA accumulates in fp32.
    if interpreting() and dtype in (torch.bfloat16, torch.float16):
        return tl.float32
    return _tl_dtype(dtype)


def _dot_precision(dtype):
    # fp32 GEMMs follow torch's own setting (TF32 off by default), so 'triton' and 'off' agree.
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@triton.jit
def _lse_kernel(H, W, B, Y, MAX_PART, SUM_PART, ZY,
                M, V, D, stride_h, stride_w, v_per_split,
                HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    v_begin = split * v_per_split
    v_end = tl.minimum(v_begin + v_per_split, V)
    run_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    run_sum = tl.zeros((BLOCK_M,), ACC)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        cols64 = cols.to(tl.int64)
        z = tl.zeros((BLOCK_M, BLOCK_V), ACC)
        for k0 in range(0, D, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_ok = ks < D
            h = tl.load(H + rows64[:, None] * stride_h + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(W + cols64[:, None] * stride_w + ks[None, :],
                        mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            z = tl.dot(h.to(DOT), tl.trans(w.to(DOT)), z, input_precision=PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            z += tl.load(B + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
        z = tl.where(col_ok[None, :], z, float("-inf"))
        # Exactly one tile of one split holds each row's label.
        has_label = row_ok & (y >= v0) & (y < v0 + BLOCK_V)
        z_label = tl.sum(tl.where(y[:, None] == cols[None, :], z, 0.0), axis=1)
        tl.store(ZY + rows, z_label, mask=has_label)
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(MAX_PART + split * M + rows, run_max, mask=row_ok)
    tl.store(SUM_PART + split * M + rows, run_sum, mask=row_ok)


@triton.jit
def _grad_kernel(H, W, B, Y, LSE, GSCALE, DH, DW, DB,
                 M, V, D, stride_h, stride_w,
                 HAS_BIAS: tl.constexpr, COMPUTE_DH: tl.constexpr, COMPUTE_DW: tl.constexpr,
                 COMPUTE_DB: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                 PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                 GROUP: tl.constexpr):
    # Grouped tile order: GROUP row blocks sweep the vocabulary side by side, so each W tile
    # is read from HBM once per group and from L2 by the rest.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_v = tl.cdiv(V, BLOCK_V)
    per_group = GROUP * num_v
    first_m = (pid // per_group) * GROUP
    group_rows = tl.minimum(num_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_v = (pid % per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < M
    col_ok = cols < V
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)

    z = tl.zeros((BLOCK_M, BLOCK_V), ACC)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_ok = ks < D
        h = tl.load(H + rows64[:, None] * stride_h + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + cols64[:, None] * stride_w + ks[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        z = tl.dot(h.to(DOT), tl.trans(w.to(DOT)), z, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        z += tl.load(B + cols, mask=col_ok, other=0.0).to(ACC)[None, :]

    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    g = tl.exp(z - lse[:, None])
    g = tl.where(y[:, None] == cols[None, :], g - 1.0, g)
    g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
    g = g * tl.load(GSCALE).to(ACC)

    if COMPUTE_DB:
        tl.atomic_add(DB + cols, tl.sum(g, axis=0), mask=col_ok)
    # GEMM operands rounded to the input dtype (as torch's bf16 backward does), fp32 accumulation.
    g_in = g.to(H.dtype.element_ty).to(DOT)
    if COMPUTE_DH:
        for k0 in range(0, D, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_ok = ks < D
            w = tl.load(W + cols64[:, None] * stride_w + ks[None, :],
                        mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            part = tl.dot(g_in, w.to(DOT), input_precision=PRECISION, out_dtype=ACC)
            tl.atomic_add(DH + rows64[:, None] * D + ks[None, :], part,
                          mask=row_ok[:, None] & k_ok[None, :])
    if COMPUTE_DW:
        for k0 in range(0, D, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_ok = ks < D
            h = tl.load(H + rows64[:, None] * stride_h + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            part = tl.dot(tl.trans(g_in), h.to(DOT), input_precision=PRECISION, out_dtype=ACC)
            tl.atomic_add(DW + cols64[:, None] * D + ks[None, :], part,
                          mask=col_ok[:, None] & k_ok[None, :])


def _num_splits(num_row_blocks, num_vocab_blocks, device):
    """Enough vocabulary splits that the forward grid has ~4 programs per SM."""
    if device.type != "cuda":
        return min(3, num_vocab_blocks)  # interpreter: a few uneven splits exercise the merge
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = -(-4 * sms // num_row_blocks)
    return max(1, min(want, num_vocab_blocks))


def _check(hidden, weight, bias):
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError(f"triton masked_lm_loss: hidden ({hidden.dtype}), weight ({weight.dtype}) "
                        f"and bias ({None if bias is None else bias.dtype}) must share one dtype")
    if weight.stride(-1) != 1:
        raise ValueError("triton masked_lm_loss: weight must be row-major (stride 1 on the hidden dim)")


def lse_forward(hidden, weight, bias, labels, block_m=None, block_v=None, block_d=None,
                num_splits=None, num_warps=8):
    """(logsumexp over the vocabulary, target logit) per row, in the accumulation dtype."""
    _check(hidden, weight, bias)
    block_m, block_v, block_d = _blocks(FWD_BLOCKS, hidden.dtype, block_m, block_v, block_d)
    hidden = hidden.contiguous()
    labels = labels.contiguous()
    num_rows, dim = hidden.shape
    vocab = weight.shape[0]
    acc = acc_dtype(hidden.dtype)
    num_m = triton.cdiv(num_rows, block_m)
    num_vb = triton.cdiv(vocab, block_v)
    if num_splits is None:
        num_splits = _num_splits(num_m, num_vb, hidden.device)
    # Whole tiles per split, and no empty split.
    blocks_per_split = triton.cdiv(num_vb, max(1, min(num_splits, num_vb)))
    num_splits = triton.cdiv(num_vb, blocks_per_split)
    max_part = torch.empty(num_splits, num_rows, dtype=acc, device=hidden.device)
    sum_part = torch.empty_like(max_part)
    z_label = torch.empty(num_rows, dtype=acc, device=hidden.device)
    _lse_kernel[(num_m, num_splits)](
        hidden, weight, hidden if bias is None else bias, labels, max_part, sum_part, z_label,
        num_rows, vocab, dim, hidden.stride(0), weight.stride(0), blocks_per_split * block_v,
        HAS_BIAS=bias is not None, ACC=_tl_dtype(acc), DOT=_dot_dtype(hidden.dtype),
        PRECISION=_dot_precision(hidden.dtype),
        BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_D=block_d, num_warps=num_warps)
    top = max_part.amax(dim=0)
    lse = top + (sum_part * torch.exp(max_part - top)).sum(dim=0).log()
    return lse, z_label


def grad_backward(hidden, weight, bias, labels, lse, grad_scale, need_hidden, need_weight,
                  need_bias, block_m=None, block_v=None, block_d=None, group=GROUP_M,
                  num_warps=8):
    """(d hidden, d weight, d bias) in the inputs' dtypes, None where not needed.

    grad_scale: tensor holding grad_output / M (read by the kernel: no host sync).
    """
    _check(hidden, weight, bias)
    block_m, block_v, block_d = _blocks(BWD_BLOCKS, hidden.dtype, block_m, block_v, block_d)
    hidden = hidden.contiguous()
    labels = labels.contiguous()
    num_rows, dim = hidden.shape
    vocab = weight.shape[0]
    acc = acc_dtype(hidden.dtype)
    dev = hidden.device
    # fp32 accumulators (for fp32 weights the weight one *is* the result: no extra copy).
    d_hidden = torch.zeros(num_rows, dim, dtype=acc, device=dev) if need_hidden else None
    d_weight = torch.zeros(vocab, dim, dtype=acc, device=dev) if need_weight else None
    d_bias = torch.zeros(vocab, dtype=acc, device=dev) if need_bias else None
    if not (need_hidden or need_weight or need_bias):
        return None, None, None
    dummy = lse
    grid = (triton.cdiv(num_rows, block_m) * triton.cdiv(vocab, block_v),)
    _grad_kernel[grid](
        hidden, weight, hidden if bias is None else bias, labels, lse.to(acc).contiguous(),
        grad_scale.to(device=dev, dtype=acc).reshape(1),
        dummy if d_hidden is None else d_hidden, dummy if d_weight is None else d_weight,
        dummy if d_bias is None else d_bias,
        num_rows, vocab, dim, hidden.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None, COMPUTE_DH=need_hidden, COMPUTE_DW=need_weight,
        COMPUTE_DB=need_bias, ACC=_tl_dtype(acc), DOT=_dot_dtype(hidden.dtype),
        PRECISION=_dot_precision(hidden.dtype),
        BLOCK_M=block_m, BLOCK_V=block_v, BLOCK_D=block_d, GROUP=group,
        num_warps=num_warps)
    return (
        None if d_hidden is None else d_hidden.to(hidden.dtype),
        None if d_weight is None else d_weight.to(weight.dtype),
        None if d_bias is None else d_bias.to(bias.dtype),
    )
