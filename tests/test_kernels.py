"""The plain-PyTorch fused paths (kernels="torch") against the reference (kernels="off").

Tolerances (fp32): the fused head reorders sums (online softmax over chunks, chunked GEMMs), so
it matches the reference to rounding, not bits: the bound of tests/helpers.py for two stages
(forward, backward) whose longest sum is the V-term softmax or d hidden GEMM (`HEAD`), relative to
each tensor's magnitude. bf16: our error against an fp32 reference must be no worse than
PyTorch's own bf16 error plus a small margin (see `_assert_no_worse_than_torch_bf16`). The Triton
kernels have their own file, `test_kernels_triton.py`; the GPU runs of both are the tests marked
`gpu`.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ds_minimodel import kernels
from ds_minimodel.kernels import chunked, embedding_torch, reference
from ds_minimodel.kernels.profiling import peak_allocated_bytes
from tests.helpers import assert_close_fp32

M, D, V = 37, 24, 301  # odd on purpose: every chunk and block has a tail
# fp32 bound of the head (tests/helpers.py): a forward stage (D-term GEMM, V-term softmax, mean
# over M) and a backward one (V-term GEMM for d hidden, M-term sums for d weight and d bias).
HEAD = dict(depth=2, reduction=max(D, V, M))


def head_inputs(m=M, d=D, v=V, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.5  # logits of order 1-3: a peaked softmax
    b = torch.randn(v, generator=g) * 0.1 if bias else None
    labels = torch.randint(0, v, (m,), generator=g)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(hidden), cast(weight), cast(b), labels


def run_head(impl, hidden, weight, bias, labels, weight_grad=True, **kw):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(weight_grad)
    b = None if bias is None else bias.detach().clone().requires_grad_(True)
    loss = kernels.masked_lm_loss(h, w, b, labels, impl=impl, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad, None if b is None else b.grad


def assert_close_all(got, want, **bound):
    """(loss, d hidden, d weight, d bias) against the reference's, each within the fp32 bound
    (HEAD unless given) at its own magnitude."""
    for name, a, b in zip(("loss", "d hidden", "d weight", "d bias"), got, want):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        assert_close_fp32(a, b, **(bound or HEAD), what=name)


# Both strategies of the "torch" path: "vocab" (recompute in backward) and "rows" (row blocks of
# R positions, gradients in forward); R = 5 and 16 leave a tail block of 37 rows.
STRATEGY_KW = {"vocab": {}, "rows5": dict(strategy="rows", rows_per_block=5),
               "rows16": dict(strategy="rows", rows_per_block=16)}


@pytest.mark.parametrize("chunk", [1, 7, 64, 300, 301, 4096])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strategy", sorted(STRATEGY_KW))
def test_chunked_head_matches_reference_fp32(chunk, bias, strategy):
    inputs = head_inputs(bias=bias)
    got = run_head("torch", *inputs, chunk_size=chunk, **STRATEGY_KW[strategy])
    want = run_head("off", *inputs)
    assert_close_all(got, want)


@pytest.mark.parametrize("strategy", ["vocab", "rows"])
def test_chunked_head_default_sizes_and_grad_output_scaling(strategy):
    inputs = head_inputs()
    for grad_output in (1.0, 2.5):  # "rows" returns its saved gradients as they are for 1
        h, w, b, y = (t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs)
        loss = kernels.masked_lm_loss(h, w, b, y, impl="torch", strategy=strategy)
        (loss * grad_output).backward()
        want = reference.masked_lm_loss_grads_reference(*inputs, grad_output=grad_output)
        assert_close_all((loss.detach(), h.grad, w.grad, b.grad), want)


def test_rows_strategy_without_grad_is_the_plain_forward():
    h, w, b, y = (t.requires_grad_(t.is_floating_point()) for t in head_inputs())
    with torch.no_grad():
        loss = kernels.masked_lm_loss(h, w, b, y, impl="torch", strategy="rows")
    assert_close_fp32(loss, kernels.masked_lm_loss(h, w, b, y, impl="off").detach(), depth=1, reduction=max(D, V, M),
                      what="loss")
    with pytest.raises(ValueError, match="unknown strategy 'cols'"):
        kernels.masked_lm_loss(h, w, b, y, impl="torch", strategy="cols")


def test_chunk_and_row_block_sizes():
    # XLM-R head, 4,096 masked positions: 128 MiB / (4096 * 4 B) = 8,192 columns per chunk.
    assert chunked.vocab_chunk_columns(4096, 250002) == 8192
    assert chunked.vocab_chunk_columns(37, 301) == 301  # a small vocabulary is one chunk
    assert chunked.vocab_chunk_columns(8, 250002) == chunked.MAX_CHUNK_COLUMNS
    assert chunked.vocab_chunk_columns(10**6, 250002) == chunked.MIN_CHUNK_COLUMNS
    assert chunked.vocab_chunk_columns(512, 8000) == 2048  # at most a quarter of the logits
    # "rows": 512 MiB / (250,002 * 4 B) -> 512 rows; all rows when they fit (fewer passes over W).
    assert chunked.row_block_rows(4096, 250002) == 512
    assert chunked.row_block_rows(154, 250002) == 154
    assert chunked.row_block_rows(4096, 32000) == 4096
    assert chunked.row_block_rows(37, 301) == 37
    assert chunked.row_block_rows(4096, 10**7) == chunked.MIN_ROW_BLOCK  # a huge vocabulary: the floor


def _rel_err(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _assert_no_worse_than_torch_bf16(ours, torch_bf16, ref32, margin=0.05):
    """Per tensor: our relative max error against the fp32 reference is at most 1.5x PyTorch's
    own bf16 error (same bf16 inputs) plus `margin` times bf16's epsilon (2^-8 = 0.0039)."""
    eps = torch.finfo(torch.bfloat16).eps
    for name, a, t, r in zip(("loss", "d hidden", "d weight", "d bias"), ours, torch_bf16, ref32):
        ours_err, torch_err = _rel_err(a, r), _rel_err(t, r)
        assert ours_err <= 1.5 * torch_err + margin * eps, (name, ours_err, torch_err)


@pytest.mark.parametrize("chunk", [64, 301])
@pytest.mark.parametrize("strategy", ["vocab", "rows16"])
def test_chunked_head_bf16_against_fp32_reference(chunk, strategy):
    h, w, b, y = head_inputs(m=53, d=40, v=517, dtype=torch.bfloat16, seed=1)
    ours = run_head("torch", h, w, b, y, chunk_size=chunk, **STRATEGY_KW[strategy])
    assert [t.dtype for t in ours] == [torch.float32] + [torch.bfloat16] * 3
    torch_bf16 = run_head("off", h, w, b, y)
    # The fp32 reference sees the same (bf16-representable) inputs: only arithmetic differs.
    ref32 = run_head("off", h.float(), w.float(), b.float(), y)
    _assert_no_worse_than_torch_bf16(ours, torch_bf16, ref32)


def test_frozen_weight_skips_the_weight_gradient_gemm():
    inputs = head_inputs()
    want = run_head("off", *inputs, weight_grad=False)
    for kw in STRATEGY_KW.values():
        got = run_head("torch", *inputs, weight_grad=False, chunk_size=50, **kw)
        assert got[2] is None
        assert_close_all(got, want)
    # Backward GEMMs: recompute + d hidden only (2 M d V), versus 3 M d V... with d weight.
    for weight_grad, n_gemms in ((True, 3), (False, 2)):
        h, w, b, y = (t.detach().clone() for t in inputs)
        h.requires_grad_(True)
        w.requires_grad_(weight_grad)
        loss = kernels.masked_lm_loss(h, w, b, y, impl="torch", chunk_size=50)
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        # FlopCounterMode sees the out-of-place GEMMs (recompute, d weight) but not the in-place
        # addmm_ that accumulates d hidden; count that one by hand.
        assert counter.get_total_flops() + 2 * M * D * V == n_gemms * 2 * M * D * V


@pytest.mark.parametrize("impl", ["torch", "off"])
def test_no_masked_rows_gives_a_connected_zero(impl):
    h, w, b, y = head_inputs(m=0)
    h.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    loss = kernels.masked_lm_loss(h, w, b, y, impl=impl)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert h.grad.shape == h.shape and not w.grad.any() and not b.grad.any()


def test_chunked_head_keeps_no_vocab_sized_buffer():
    """Peak tensor memory, fwd + bwd: the gradients plus one [M, chunk] buffer ("vocab") or one
    [R, V] block ("rows"), not [M, V]."""
    m, d, v, chunk, rows = 256, 32, 20000, 1024, 32
    h, w, b, y = (t.requires_grad_(t.is_floating_point()) for t in head_inputs(m=m, d=d, v=v))
    peaks = {}
    for name, kw in {"off": dict(impl="off"), "vocab": dict(impl="torch"),
                     "rows": dict(impl="torch", strategy="rows", rows_per_block=rows)}.items():
        h.grad = w.grad = b.grad = None

        def step(kw=kw):
            kernels.masked_lm_loss(h, w, b, y, chunk_size=chunk, **kw).backward()

        peaks[name], _ = peak_allocated_bytes(step)
    grads = 4 * (v * d + m * d + v)  # d weight, d hidden, d bias: the same in all
    assert peaks["off"] >= 3 * m * v * 4  # logits, log-softmax and its gradient, at once
    small = 2**18  # [V]- and [M]-sized temporaries (column sums, statistics)
    assert peaks["vocab"] <= grads + 4 * m * chunk + small
    assert peaks["rows"] <= grads + 4 * (rows * v + rows * chunk) + small


def test_saves_nothing_big_and_nothing_after_backward():
    """The autograd node holds inputs and [M] statistics only (ZeRO-3: the weight is saved as
    the Parameter itself, freed with the graph's saved tensors after backward)."""
    h, w, b, y = head_inputs()
    h.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    loss = kernels.masked_lm_loss(h, w, b, y, impl="torch")
    saved = loss.grad_fn.saved_tensors
    assert any(t is w for t in saved)
    assert max(t.numel() for t in saved) == w.numel()
    loss.backward()
    with pytest.raises(RuntimeError, match="freed|backward through the graph a second time"):
        loss.grad_fn.saved_tensors


@pytest.mark.parametrize("strategy", sorted(STRATEGY_KW))
def test_gradcheck_chunked_head_fp64(strategy):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 10, 3, 3, 7, 1, 10])
    kw = STRATEGY_KW[strategy]
    # "rows" hands out its forward-time gradients on the first backward and recomputes them on a
    # later one (gradcheck backpropagates through one forward many times): the same gradient
    # summed in another order, so its reentrancy check allows fp64 rounding.
    tol = 1e-12 if "rows" in strategy else 0.0
    assert torch.autograd.gradcheck(
        lambda h, w, b: kernels.masked_lm_loss(h, w, b, y, impl="torch", chunk_size=4, **kw), (h, w, b),
        nondet_tol=tol)
    assert torch.autograd.gradcheck(
        lambda h, w: kernels.masked_lm_loss(h, w, None, y, impl="torch", chunk_size=3, **kw), (h, w),
        nondet_tol=tol)


def test_dispatch_and_errors(monkeypatch):
    h, w, b, y = head_inputs()
    h.requires_grad_(True)
    assert "Chunked" in type(kernels.masked_lm_loss(h, w, b, y).grad_fn).__name__  # auto on CPU
    assert kernels.resolve_impl("auto", h) == "torch"
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        kernels.masked_lm_loss(h, w, b, y, impl="fast")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA tensors only.*TRITON_INTERPRET=1"):
        kernels.masked_lm_loss(h, w, b, y, impl="triton")
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        kernels.embedding(y, w.requires_grad_(True), impl="triton")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 301\).*-100"):
        kernels.masked_lm_loss(h, w, b, torch.full_like(y, -100), impl="torch")
    with pytest.raises(ValueError, match="bias must be"):
        kernels.masked_lm_loss(h, w, b[:-1], y, impl="torch")


# ---------------------------------------------------------------- embedding backward (torch)

def emb_inputs(n=(3, 41), v=97, d=40, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, n, generator=g)
    ids[:, ::5] = 1  # many repeats of the padding id, and of a few others
    ids[0, :7] = 5
    weight = torch.randn(v, d, generator=g).to(dtype)
    grad_out = torch.randn(*n, d, generator=g).to(dtype)
    return ids, weight, grad_out


def emb_bound(ids):
    """fp32 bound of an embedding gradient (tests/helpers.py): one stage; a row sums the output
    gradients of every token with its id, at most all of them."""
    return dict(depth=1, reduction=ids.numel())


def embedding_grad(impl, ids, weight, grad_out, padding_idx, **kw):
    w = weight.detach().clone().requires_grad_(True)
    out = kernels.embedding(ids, w, impl=impl, padding_idx=padding_idx, **kw)
    out.backward(grad_out)
    return out.detach(), w.grad


@pytest.mark.parametrize("padding_idx", [None, 1, -96])
def test_embedding_torch_matches_nn_embedding(padding_idx):
    ids, weight, grad_out = emb_inputs()
    out, grad = embedding_grad("torch", ids, weight, grad_out, padding_idx)
    # What HF RoBERTa / XLM-R use: nn.Embedding(padding_idx=1) -> no gradient into row 1.
    emb = torch.nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=padding_idx)
    with torch.no_grad():
        emb.weight.copy_(weight)
    want_out = emb(ids)
    want_out.backward(grad_out)
    torch.testing.assert_close(out, want_out.detach(), rtol=0, atol=0)
    assert_close_fp32(grad, emb.weight.grad, **emb_bound(ids), what="d weight")
    if padding_idx is not None:
        assert not grad[padding_idx % weight.shape[0]].any()


def test_embedding_bf16_accumulates_in_fp32():
    ids, weight, grad_out = emb_inputs(dtype=torch.bfloat16, n=(8, 64))
    ids[:, :40] = 7  # 320 bf16 terms into one row: bf16 accumulation would drift visibly
    _, grad = embedding_grad("torch", ids, weight, grad_out, 1)
    want = reference.embedding_backward_reference(grad_out, ids, weight.shape[0], 1)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad, want, rtol=0, atol=0)  # fp32 sums, one rounding: exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_torch_paths_agree(dtype):
    ids, weight, grad_out = emb_inputs(dtype=dtype)
    want = reference.embedding_backward_reference(grad_out, ids, weight.shape[0], 1)
    for fn in (embedding_torch.embedding_backward_index_add, embedding_torch.embedding_backward_sorted):
        if dtype == torch.float32:
            assert_close_fp32(fn(grad_out, ids, weight.shape[0], 1), want, **emb_bound(ids), what=fn.__name__)
        else:  # the same fp32 sums in the same (token) order as the reference, one rounding: exact
            torch.testing.assert_close(fn(grad_out, ids, weight.shape[0], 1), want, rtol=0, atol=0)


def test_embedding_off_and_frozen_are_plain_lookups():
    ids, weight, _ = emb_inputs()
    assert kernels.embedding(ids, weight, impl="torch").grad_fn is None  # frozen: no custom node
    out = kernels.embedding(ids, weight.requires_grad_(True), impl="off", padding_idx=1)
    assert "Embedding" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, F.embedding(ids, weight), rtol=0, atol=0)
    with pytest.raises(ValueError, match="padding_idx 97 is outside"):
        kernels.embedding(ids, weight, impl="torch", padding_idx=97)


def test_gradcheck_embedding_fp64():
    ids, weight, _ = emb_inputs(n=(2, 9), v=7, d=3)
    w = weight.double().requires_grad_(True)
    # No padding_idx: a padding row's gradient is zero by contract, not the numerical derivative.
    assert torch.autograd.gradcheck(lambda w: kernels.embedding(ids, w, impl="torch"), (w,))


# ---------------------------------------------------------------- a short adaptation run

def _adapt_losses(impl, steps=10, device="cpu"):
    from ds_minimodel.config import ModelConfig
    from ds_minimodel.model import IGNORE_INDEX, MLMEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=301, hidden_size=24, num_layers=2, num_heads=2, intermediate_size=48,
                      max_positions=40, hidden_dropout=0.0, attention_dropout=0.0, kernels=impl,
                      mini_depth=1)
    model = MLMEncoder(cfg).to(device)
    initial_word = model.embeddings.word.detach().cpu().clone()
    # Step 2 (adapt): only the word embeddings (tied to the output layer) and the output bias.
    trainable = {id(model.embeddings.word), id(model.mid_head.bias)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        if step % 2 == 0:
            g.manual_seed(1)  # two batches, alternating: the loss on them must go down
        ids = torch.randint(3, 301, (4, 17), generator=g)
        ids[:, -3:] = cfg.pad_token_id  # padded tails: padding_idx semantics on both paths
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = (torch.rand(ids.shape, generator=g) < 0.3) & ids.ne(cfg.pad_token_id)
        labels[mask] = ids[mask]
        ids, labels = ids.masked_fill(mask, 2).to(device), labels.to(device)
        loss = model(ids, labels=labels, attention_mask=ids.ne(cfg.pad_token_id), route="mid")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses), model.embeddings.word.detach().cpu(), initial_word


# fp32 bound of the short run (tests/helpers.py): a step is a forward through embeddings, layer 1
# and the mid head and a backward through them (6 stages), the longest sum the 301-term softmax;
# the loss of step s has s steps of rounding behind it.
ADAPT_RUN = dict(depth=6, reduction=301)


def assert_same_adaptation_run(fused, plain):
    """Two _adapt_losses results agree to rounding: the losses step by step, and the word table
    by what training changed (SGD adds up gradients: the error is relative to the change, not to
    the initial table, which both runs share bit for bit)."""
    (fused_losses, fused_word, initial), (plain_losses, plain_word, plain_initial) = fused, plain
    assert torch.equal(initial, plain_initial)
    for step, (a, b) in enumerate(zip(fused_losses, plain_losses), 1):
        assert_close_fp32(a, b, **ADAPT_RUN, steps=step, what=f"loss at step {step}")
    assert_close_fp32(fused_word - initial, plain_word - initial, **ADAPT_RUN, steps=len(fused_losses),
                      what="change of the word table")


def test_short_adaptation_run_torch_matches_off():
    fused = _adapt_losses("torch")
    assert fused[0][-1] < fused[0][0]  # it learns
    assert_same_adaptation_run(fused, _adapt_losses("off"))


# ---------------------------------------------------------------- one gradient for the tied table

class _TableSizedTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """The distinct storages of every [V, d] tensor an op returns, other than the table's own
    (its views), held so that freed memory cannot be reused and counted once for two tensors."""

    def __init__(self, table, before=None):
        super().__init__()
        self.shape, self.tensors = tuple(table.shape), {table.untyped_storage().data_ptr(): None}
        self.known = set(before.tensors) if before else set()  # made earlier (forward's)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and tuple(t.shape) == self.shape:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.known:
                    self.tensors.setdefault(ptr, t)
        return out

    def made(self) -> int:
        return len(self.tensors) - 1


@pytest.mark.parametrize("strategy", ["vocab", "rows"])
def test_tied_table_gets_one_gradient_buffer(strategy):
    """A MiniJoint step (the lookup and two MLM heads read the word table): its gradient is the
    reference's (kernels="off": F.embedding, full logits, autograd summing three [V, d] tensors),
    the padding row's too (head gradient only), and only one [V, d] tensor is ever made for it:
    "vocab" makes it in backward; "rows" computes each head's d W in forward (two), and backward
    adds the second into the first and the lookup's rows into that, making none."""
    from ds_minimodel.config import ModelConfig
    from ds_minimodel.model import IGNORE_INDEX, MLMEncoder

    cfg = ModelConfig(vocab_size=301, hidden_size=24, num_layers=2, num_heads=2, intermediate_size=48,
                      max_positions=40, hidden_dropout=0.0, attention_dropout=0.0, kernels="torch",
                      mini_depth=1, mid_head_weight=0.7, head_strategy=strategy)
    torch.manual_seed(0)
    fused = MLMEncoder(cfg)
    plain = MLMEncoder(dataclasses.replace(cfg, kernels="off"))
    plain.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 301, (4, 17), generator=g)
    ids[:, -3:] = cfg.pad_token_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = (torch.rand(ids.shape, generator=g) < 0.3) & ids.ne(cfg.pad_token_id)
    labels[mask] = ids[mask]
    attention = ids.ne(cfg.pad_token_id)

    table = fused.embeddings.word
    with _TableSizedTensors(table) as forward:
        loss = fused(ids, labels=labels, attention_mask=attention)["loss"]
    with _TableSizedTensors(table, before=forward) as backward:
        loss.backward()
    plain(ids, labels=labels, attention_mask=attention)["loss"].backward()
    made = (forward.made(), backward.made())
    assert made == ((0, 1) if strategy == "vocab" else (2, 0)), made
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert_close_fp32(p.grad, q.grad, depth=6, reduction=301, what=name)
    assert fused.embeddings.word.grad[cfg.pad_token_id].abs().sum() > 0  # the heads' share of the pad row
