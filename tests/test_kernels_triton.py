"""The Triton kernels against the reference, in Triton's CPU interpreter and, where there is
one, on the GPU.

Triton fixes at `import triton` whether kernels are compiled or interpreted (see
`ds_minimodel/kernels/triton_support.py`), so one process cannot do both, and setting
TRITON_INTERPRET=1 here would have to happen before anything else in the pytest process imports
triton, and would then hold for the rest of the session. Instead:

* the interpreter cases (ids `...[interpret]`) run in a child pytest process started with
  TRITON_INTERPRET=1 by `test_child_process_runs_the_cpu_cases`, which fails with the
  child's report if any of them fails; nothing in this process sees the variable;
* a process started with TRITON_INTERPRET=1 (that child, or a developer's
  `TRITON_INTERPRET=1 pytest tests/test_kernels_triton.py`) runs those cases directly;
* the `gpu`-marked cases (ids `...[cuda]`, and the GPU-only tests at the end) run here with
  compiled Triton on CUDA, and are skipped, with the reason shown, where CUDA is absent;
* `test_kernels_compile_for_gpus_without_one` compiles the kernels for A100 and H100 here even
  without a GPU.

Interpreted Triton is slow: tiny odd shapes (M=37, d=24, V=301) with small tiles
(16 x 32 x 16) so that every masked tail, the vocabulary-split merge and the grouped tile order
all run. Tolerances as in test_kernels.py: the fp32 bound of tests/helpers.py against the fp32
reference; bf16 no worse than PyTorch's own bf16 error plus a margin.
"""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import triton  # noqa: E402  (a dependency: a missing triton must fail these tests, not skip them)
from test_kernels import (
    _assert_no_worse_than_torch_bf16,
    assert_close_all,
    emb_bound,
    emb_inputs,
    embedding_grad,
    head_inputs,
    run_head,
)

from ds_minimodel import kernels
from ds_minimodel.kernels import reference
from ds_minimodel.kernels.triton_support import interpreting
from tests.helpers import assert_close_fp32

CUDA = torch.cuda.is_available()
INTERPRET = interpreting()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device "
                                            "(and TRITON_INTERPRET unset)")]
# This process runs the interpreter cases only when it was started in interpreter mode.
DEVICES = [pytest.param("cpu", id="interpret")] if INTERPRET else [pytest.param("cuda", id="cuda", marks=gpu)]

# Small tiles for the tiny shapes (tl.dot needs >= 16 per side). On the GPU the production
# defaults run as well (the `blocks=None` cases).
SMALL = {"forward": dict(block_m=16, block_v=32, block_d=16, num_splits=3),
         "backward": dict(block_m=16, block_v=32, block_d=16, group=2)}


@pytest.mark.skipif(INTERPRET, reason="this is the child: it runs the interpreter cases itself")
def test_child_process_runs_the_cpu_cases():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interpret", __file__]
    child = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                           text=True, timeout=600)
    report = child.stdout[-12000:] + child.stderr[-4000:]
    assert child.returncode == 0, report
    summary = child.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "deselected" in summary, report
    print(summary)  # shown with -rP / -s


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def to(device, *tensors):
    return tuple(None if t is None else t.to(device) for t in tensors)


def blocks_for(device):
    return [SMALL] if device.type == "cpu" else [SMALL, None]


@pytest.mark.parametrize("bias", [True, False])
def test_triton_head_matches_reference_fp32(device, bias):
    inputs = to(device, *head_inputs(bias=bias))
    want = run_head("off", *inputs)
    for blocks in blocks_for(device):
        got = run_head("triton", *inputs, triton_blocks=blocks)
        assert_close_all(got, want)


def test_triton_head_frozen_weight_and_grad_scaling(device):
    inputs = to(device, *head_inputs(seed=2))
    got = run_head("triton", *inputs, weight_grad=False, triton_blocks=SMALL)
    assert got[2] is None
    assert_close_all(got, run_head("off", *inputs, weight_grad=False))
    h, w, b, y = (t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs)
    loss = kernels.masked_lm_loss(h, w, b, y, impl="triton", triton_blocks=SMALL)
    (loss * 2.5).backward()
    want = reference.masked_lm_loss_grads_reference(*inputs, grad_output=2.5)
    assert_close_all((loss.detach(), h.grad, w.grad, b.grad), want)


def test_triton_head_bf16_against_fp32_reference(device):
    h, w, b, y = to(device, *head_inputs(m=53, d=40, v=517, dtype=torch.bfloat16, seed=1))
    ours = run_head("triton", h, w, b, y, triton_blocks=SMALL)
    assert [t.dtype for t in ours] == [torch.float32] + [torch.bfloat16] * 3
    torch_bf16 = run_head("off", h, w, b, y)
    ref32 = run_head("off", h.float(), w.float(), b.float(), y)
    _assert_no_worse_than_torch_bf16(ours, torch_bf16, ref32)


def test_triton_head_no_masked_rows(device, monkeypatch):
    """A rank with no masked token runs the Triton kernels (empty grids), not a fallback: a zero
    loss that still has a backward, and zero gradients of the right shapes."""
    from ds_minimodel.kernels import triton_head

    calls = []
    for name in ("lse_forward", "grad_backward"):
        def spy(*args, _real=getattr(triton_head, name), _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(triton_head, name, spy)
    h, w, b, y = to(device, *head_inputs(m=0))
    h.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    loss = kernels.masked_lm_loss(h, w, b, y, impl="triton", triton_blocks=SMALL)
    assert "Triton" in type(loss.grad_fn).__name__
    loss.backward()
    assert calls == ["lse_forward", "grad_backward"]
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert h.grad.shape == h.shape == (0, w.shape[1])
    assert w.grad.shape == w.shape and not w.grad.any() and b.grad.shape == b.shape and not b.grad.any()


def test_gradcheck_triton_head_fp64(device):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 6, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    w = torch.randn(19, 6, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    b = torch.randn(19, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    y = torch.tensor([0, 18, 3, 3, 16], device=device)

    def loss(h, w, b):
        return kernels.masked_lm_loss(h, w, b, y, impl="triton", triton_blocks=SMALL)

    # fast_mode: a random projection of the Jacobian (a few interpreted launches, not hundreds).
    assert torch.autograd.gradcheck(loss, (h, w, b), fast_mode=True)


# ---------------------------------------------------------------- embedding backward

@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("padding_idx", [None, 1])
def test_triton_embedding_backward_fp32(device, deterministic, padding_idx):
    ids, weight, grad_out = to(device, *emb_inputs())
    out, grad = embedding_grad("triton", ids, weight, grad_out, padding_idx, deterministic=deterministic)
    torch.testing.assert_close(out, F.embedding(ids, weight), rtol=0, atol=0)
    want = reference.embedding_backward_reference(grad_out, ids, weight.shape[0], padding_idx)
    assert_close_fp32(grad, want, **emb_bound(ids), what="d weight")


@pytest.mark.parametrize("deterministic", [True, False])
def test_triton_embedding_backward_bf16_accumulates_in_fp32(device, deterministic):
    ids, weight, grad_out = to(device, *emb_inputs(dtype=torch.bfloat16, n=(4, 50)))
    ids[:, :30] = 7  # 120 bf16 terms into one row
    _, grad = embedding_grad("triton", ids, weight, grad_out, 1, deterministic=deterministic)
    want = reference.embedding_backward_reference(grad_out, ids, weight.shape[0], 1)
    assert grad.dtype == torch.bfloat16
    # fp32 sums in another order, then one rounding: at most one bf16 ulp (2^-7 relative) apart.
    # (Triton's interpreter truncates fp32 -> bf16 casts where the GPU rounds to nearest even,
    # which also makes it one ulp at most.)
    torch.testing.assert_close(grad, want, rtol=2**-7, atol=1e-6)
    bf16_sum = grad_out.reshape(-1, grad_out.shape[-1])[ids.reshape(-1) == 7]
    naive = torch.zeros_like(bf16_sum[0])
    for row in bf16_sum:  # what accumulating in bf16 would give
        naive += row
    assert (grad[7].float() - want[7].float()).abs().max() < (naive.float() - want[7].float()).abs().max()


def test_triton_embedding_small_tiles_and_determinism(device):
    from ds_minimodel.kernels import triton_embedding as te

    ids, weight, grad_out = to(device, *emb_inputs(n=(3, 41), d=40))
    want = reference.embedding_backward_reference(grad_out, ids, weight.shape[0], 1)
    # block_n=4 makes the hot segments (id 1 and 5) take several steps; block_d=16 leaves a tail.
    runs = [te.embedding_backward_deterministic(grad_out, ids, weight.shape[0], 1, block_n=4, block_d=16)
            for _ in range(2)]
    assert_close_fp32(runs[0], want, **emb_bound(ids), what="deterministic d weight")
    assert torch.equal(runs[0], runs[1])
    atomic = te.embedding_backward_atomic(grad_out, ids, weight.shape[0], 1, block_n=4, block_d=16)
    assert_close_fp32(atomic, want, **emb_bound(ids), what="atomic d weight")


def test_gradcheck_triton_embedding_fp64(device):
    ids, weight, _ = to(device, *emb_inputs(n=(2, 9), v=7, d=3))
    w = weight.double().requires_grad_(True)
    for det in (True, False):
        assert torch.autograd.gradcheck(
            lambda w, det=det: kernels.embedding(ids, w, impl="triton", deterministic=det), (w,))


# ---------------------------------------------------------------- ahead-of-time GPU compilation

SM_SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # usable shared memory per block (A100, H100)


def _aot(fn, pointers, constexprs, capability, num_warps):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(fn.fn).parameters)
    signature = {p: pointers.get(p, "constexpr" if p in constexprs else "i32") for p in params}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})


@pytest.mark.skipif(INTERPRET, reason="triton.compile needs Triton in compiled mode (TRITON_INTERPRET unset)")
@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_for_gpus_without_one(capability, monkeypatch):
    """Lower every kernel (bf16, the production dtype; production tiles) through Triton's NVIDIA
    backend to a cubin for A100 / H100, with no GPU present, and check the shared memory fits:
    what the interpreter cannot show (layouts, MMA lowering, resource limits)."""
    pytest.importorskip("triton.backends.nvidia", reason="triton built without its NVIDIA backend")
    import triton.language as tl

    from ds_minimodel.kernels import triton_embedding as te
    from ds_minimodel.kernels import triton_head as th

    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    bf, f32, i64 = "*bf16", "*fp32", "*i64"
    common = dict(ACC=tl.float32, DOT=tl.bfloat16, PRECISION="ieee")
    built = [
        _aot(th._lse_kernel, dict(H=bf, W=bf, B=bf, Y=i64, MAX_PART=f32, SUM_PART=f32, ZY=f32),
             dict(HAS_BIAS=True, **common, **{k.upper(): v for k, v in th.FWD_BLOCKS.items()}),
             capability, 8),
        _aot(th._grad_kernel, dict(H=bf, W=bf, B=bf, Y=i64, LSE=f32, GSCALE=f32, DH=f32, DW=f32, DB=f32),
             dict(HAS_BIAS=True, COMPUTE_DH=True, COMPUTE_DW=True, COMPUTE_DB=True, GROUP=th.GROUP_M,
                  **common, **{k.upper(): v for k, v in th.BWD_BLOCKS.items()}), capability, 8),
        _aot(te._segment_sum_kernel, dict(G=bf, PERM=i64, OFFSETS=i64, SEG_IDS=i64, OUT=bf),
             dict(ACC=tl.float32, BLOCK_N=te.BLOCK_N, BLOCK_D=te.BLOCK_D), capability, 4),
        _aot(te._atomic_kernel, dict(G=bf, IDS=i64, OUT=f32),
             dict(BLOCK_N=te.BLOCK_N, BLOCK_D=te.BLOCK_D), capability, 4),
    ]
    for kernel in built:
        assert kernel.asm["cubin"], kernel.name
        assert kernel.metadata.shared <= SM_SHARED_LIMIT[capability], (kernel.name, kernel.metadata.shared)


# ---------------------------------------------------------------- GPU-only

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)")
def test_gpu_auto_dispatch_and_chunked_path_on_cuda():
    inputs = to(torch.device("cuda"), *head_inputs())
    h = inputs[0].clone().requires_grad_(True)
    assert "Triton" in type(kernels.masked_lm_loss(h, *inputs[1:]).grad_fn).__name__
    assert_close_all(run_head("torch", *inputs, chunk_size=64), run_head("off", *inputs))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)")
def test_gpu_cuda_extension_embedding_backward():
    ids, weight, grad_out = to(torch.device("cuda"), *emb_inputs())
    for dtype in (torch.float32, torch.bfloat16):
        g = grad_out.to(dtype)
        _, grad = embedding_grad("cuda", ids, weight.to(dtype), g, 1)
        want = reference.embedding_backward_reference(g, ids, weight.shape[0], 1)
        if dtype == torch.float32:
            assert_close_fp32(grad, want, **emb_bound(ids), what="d weight")
        else:  # fp32 sums in another order, then one rounding: at most one bf16 ulp apart
            torch.testing.assert_close(grad, want, rtol=2**-7, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)")
def test_gpu_short_adaptation_run_triton_matches_off():
    from test_kernels import _adapt_losses, assert_same_adaptation_run

    assert_same_adaptation_run(_adapt_losses("triton", device="cuda"), _adapt_losses("off", device="cuda"))
