"""What the tests share (no test file imports another):

* float tolerances for comparing an fp32 computation with an independent reference (below);
* bad input: the one-`error:`-line contract, in-process and through a real launcher;
* runs, crashes and resumes, read from disk independently of the toolkit's checkpoint code;
* tiny random Hugging Face models for the parity tests;
* a pipeline step in a forked rank; run-directory lock holders in their own processes.

Why a derived float bound. Two correct fp32 implementations of the same math (ours and Hugging Face's,
a fused kernel and the plain one, DeepSpeed's ZeRO and a plain loop) differ by rounding only, and
how they round depends on the CPU: ATen picks AVX-512, AVX2 or scalar kernels at run time, MKL
and OpenBLAS pick their GEMM blocking by CPU, and each changes the order of the sums and the
ulp-level results of exp, erf, tanh. A tolerance fitted to one machine's errors (`atol=1e-5`)
fails on another. `fp32_tolerance` instead bounds the rounding error of the computation:

* one reduction of n terms summed in another order: each partial sum is rounded (error at most
  eps/2 times its size) and the n rounding errors have random signs, so they add like a random
  walk: about eps * sqrt(n) * M, with M the magnitude of the values (n * eps * M is the strict
  worst case; the random-walk size is what every implementation shows, and keeps the bound small
  enough to catch real bugs);
* a network adds one such error per stage (an encoder layer, the MLM head, the backward pass
  through a layer). Post-LN layer norms renormalise every layer's output, so an error carried
  from earlier stages is passed on roughly unamplified: after `depth` stages it is at most
  `depth` times one stage's error (linear, not geometric);
* two training runs start from the same weights bit for bit, so compare what training changed
  (w - w0). Adam moves each weight by lr times a normalised update whose relative error is the
  gradient's (a forward and a backward pass: count both in `depth`), and adds those moves up: the
  change's error relative to the change stays one step's (steps=1). Where errors feed back
  (plain SGD with a large step: a weight's error changes the next gradients), each step adds
  its own on top of the carried ones: `steps` times;
* errors are absolute at the scale of the whole tensor, not of each element: an element near
  zero is a sum of large terms and carries their error. So atol = rtol * magnitude, where
  magnitude is max |expected| by default (pass `magnitude=` where the terms are larger than the
  result, e.g. the size of what training changed);
* SAFETY = 16 = 4 * 4: 4 because the test takes the largest of 10^2..10^5 roughly Gaussian
  errors (about 4 standard deviations), and 4 for the several reductions and pointwise functions
  inside one stage (q k v, the scores, softmax, attention times v, two MLP GEMMs, two layer norms:
  sqrt(8) ~ 3) and the gain of random weights.

So rtol = SAFETY * eps * sqrt(reduction) * depth * steps and atol = rtol * magnitude, e.g. 1.5e-5
relative for one stage of 64-term sums. This is loose against rounding (the measured worst case,
bench/tolerance_report.py, stays far below it on every ISA ATen and MKL offer) and tight against
bugs, whose errors are of the size of the values themselves: a dropped bias, a missing layer
norm or a wrong scale is off by 1e-2..1e0 relative.

Set DSM_TOLERANCE_LOG=path to append, per comparison, the largest error, the bound there and
their ratio (pass iff <= 1) as one JSON line; bench/tolerance_report.py tabulates the logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from ds_minimodel.training import run_lock
from ds_minimodel.training.metrics import read_metrics
from tests.conftest import REPO
from tests.distributed import run_ranks

FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23: the spacing of fp32 numbers at 1.0
SAFETY = 16.0


def fp32_tolerance(expected, *, depth: int, reduction: int, steps: int = 1, magnitude: float | None = None,
                   safety: float = SAFETY) -> dict:
    """{"rtol", "atol"} for comparing an fp32 result with `expected` (see the module docstring).

    depth: stages the values went through (layers, head; count a backward pass again);
    reduction: the longest sum in one stage (hidden size, sequence length, vocabulary, tokens in
    a weight gradient); steps: optimizer steps whose errors feed back (1 for Adam's changes);
    magnitude: the scale of the values' errors, default max |expected|.
    """
    assert depth >= 1 and reduction >= 1 and steps >= 1, (depth, reduction, steps)
    rtol = safety * FP32_EPS * math.sqrt(reduction) * depth * steps
    if magnitude is None:
        values = _as_tensor(expected).detach()
        magnitude = float(values.double().abs().max()) if values.numel() else 0.0
    return {"rtol": rtol, "atol": rtol * magnitude}


def _as_tensor(x) -> torch.Tensor:
    # Python floats (losses read back from metrics.jsonl) compare as float64: they are fp32
    # values already, widened exactly.
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def assert_close_fp32(actual, expected, *, depth: int, reduction: int, steps: int = 1,
                      magnitude: float | None = None, safety: float = SAFETY, what: str = "") -> None:
    """torch.testing.assert_close with the derived fp32 bound; `what` names the quantity in the
    failure message and in the tolerance log."""
    actual, expected = _as_tensor(actual), _as_tensor(expected)
    tol = fp32_tolerance(expected, depth=depth, reduction=reduction, steps=steps, magnitude=magnitude, safety=safety)
    derivation = (f"fp32 bound: depth {depth}, reduction {reduction}, steps {steps}, safety {safety:g}, "
                  f"magnitude {tol['atol'] / tol['rtol']:.3g} -> rtol {tol['rtol']:.2e}, atol {tol['atol']:.2e}")
    if os.environ.get("DSM_TOLERANCE_LOG") and actual.shape == expected.shape:
        record(what, actual, expected, **tol, depth=depth, reduction=reduction, steps=steps)
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what + ': ' if what else ''}{m}\n{derivation}")


def setting() -> str:
    """The kernel setting a comparison ran under, for the tolerance log: DSM_TOLERANCE_SETTING if
    set, else ATEN_CPU_CAPABILITY, else "native"; plus the capability ATen really uses."""
    name = os.environ.get("DSM_TOLERANCE_SETTING") or os.environ.get("ATEN_CPU_CAPABILITY") or "native"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def record(what: str, actual, expected, *, rtol: float, atol: float, **derivation) -> None:
    """Append {test, what, setting, max_err, bound, ratio, ...} to $DSM_TOLERANCE_LOG (one line:
    O_APPEND writes of one short line from forked ranks do not interleave)."""
    path = os.environ.get("DSM_TOLERANCE_LOG")
    if not path:
        return
    a, e = _as_tensor(actual).detach().double().cpu(), _as_tensor(expected).detach().double().cpu()
    err = (a - e).abs()
    bound = atol + rtol * e.abs()
    if err.numel():
        ratio = torch.where(bound > 0, err / bound, torch.where(err > 0, torch.inf, 0.0)).reshape(-1)
        worst = int(ratio.argmax())
        row = dict(max_err=float(err.max()), bound=float(bound.reshape(-1)[worst]), ratio=float(ratio[worst]))
    else:
        row = dict(max_err=0.0, bound=atol, ratio=0.0)
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    line = json.dumps(dict(test=test, what=what, setting=setting(), **row, rtol=rtol, atol=atol, **derivation))
    with open(path, "a") as f:
        f.write(line + "\n")



# ---- Bad input: one `error:` line, exit 2, nothing changed -------------------------------------

def tree_hash(root) -> str:
    """Every file's path and content under root. A run-lock owner record (`.owner.<N>.json`) is
    hashed without its heartbeat: a live owner rewrites that every second or so, which is not a
    change made by the run being refused."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                data = f.read()
            if name.startswith(".owner.") and name.endswith(".json"):
                try:
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "heartbeat"},
                                      sort_keys=True).encode()
                except ValueError:
                    pass  # a record being written: its bytes as they are
            h.update(data)
    return h.hexdigest()


def expect_rejected(capsys, main, argv, *needles, watch=()):
    before = [tree_hash(p) for p in watch]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], f"{needle!r} not in {err[0]!r}"
    assert [tree_hash(p) for p in watch] == before, "a bad-input run changed files"
    return err[0]


def expect_rejected_cli(launcher: str, argv, *needles, watch=(), env=None, timeout=300) -> str:
    """The same contract for the real launcher run as a subprocess: stderr is that one line."""
    before = [tree_hash(p) for p in watch]
    proc = subprocess.run([sys.executable, f"launchers/{launcher}.py", *map(str, argv)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), \
        f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"
    for needle in needles:
        assert needle in err[0], f"{needle!r} not in {err[0]!r}"
    assert [tree_hash(p) for p in watch] == before, "a bad-input run changed files"
    return err[0]


def pretrain_until(rank, data, out, stop):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", f"train.stop_at_step={stop}"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"))


def du_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*"))


def disk_full_run(tmp_path, tiny_corpus) -> tuple[Path, dict, str]:
    """A run with checkpoint step 3, placed where checkpoint step 6 cannot fit: a tmpfs with
    room for the run plus half a checkpoint (or, where nothing can be mounted, a normal
    directory and an injected ENOSPC). Returns (run dir, env for the resume, how)."""
    staged = tmp_path / "staged"
    run_ranks(pretrain_until, 1, args=(tiny_corpus, staged, 3))
    checkpoint = du_bytes(staged / "checkpoints" / "step_00000003")
    point = tmp_path / "full"
    point.mkdir()
    size_kib = (du_bytes(staged) + checkpoint // 2) // 1024
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                          capture_output=True)
    env, how = {}, "tmpfs"
    if proc.returncode:
        env, how = {"DSM_FAULT": "enospc:save_shards:6"}, "injected ENOSPC"
    import shutil

    shutil.copytree(staged, point / "run")
    return point / "run", env, how


# ---- Runs, crashes and resumes, read from disk independently of the toolkit's checkpoint code --

def newest_complete_step(run_dir: Path) -> int:
    """Step of the newest checkpoint directory whose meta.json exists and lists only files that
    are there with their sizes (0 if none)."""
    best = 0
    for d in (run_dir / "checkpoints").glob("step_*"):
        meta = d / "meta.json"
        if meta.is_file():
            files = json.loads(meta.read_text())["files"]
            if all((d / f).is_file() and (d / f).stat().st_size == n for f, n in files.items()):
                best = max(best, int(d.name.split("_")[1]))
    return best


def last_logged_step(run_dir: Path) -> int:
    return max((r["step"] for r in read_metrics(run_dir, "train")), default=0)


def resumed_at(run_dir: Path) -> int:
    records = read_metrics(run_dir, "resume")
    assert records, "the resumed run did not record which checkpoint it continued from"
    return records[-1]["step"]


def loss_log(run_dir: Path) -> list:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir, "train")]


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: resumed run differs from the uninterrupted one in {differ[:5]}"


def crash_then_resume(record_property, run_dir: Path, crash, resume, steps: int) -> str:
    """crash() runs the failing attempt and returns its report; then the measurements; then
    resume() must finish the run. Returns the crash's report."""
    report = crash()
    newest, crashed_at = newest_complete_step(run_dir), last_logged_step(run_dir)
    resume()
    start = resumed_at(run_dir)
    lost = (newest - start) + (steps - last_logged_step(run_dir))
    record_property("steps_lost", lost)
    record_property("steps_rerun", max(0, crashed_at - start))
    assert lost == 0, f"resumed at step {start} although step {newest} was checkpointed"
    return report


def failing(fn, *args, **kwargs) -> str:
    """Run run_ranks(...) that must fail; returns every rank's error."""
    with pytest.raises(AssertionError) as exc:
        run_ranks(fn, *args, **kwargs)
    return str(exc.value)


def pretrain_with_nan_at(rank, data, out, bad_call):
    import torch

    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.model import MLMEncoder
    from ds_minimodel.steps import pretrain

    forward, calls = MLMEncoder.forward, [0]

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls[0] += 1
            if calls[0] >= bad_call:
                out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    MLMEncoder.forward = poisoned
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "train.save_every=2", "train.grad_accum=1"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"))


# ---- Tiny random Hugging Face models (parity tests) --------------------------------------------

V, D, L, H, I, P = 120, 32, 3, 4, 64, 40
# fp32 bounds (tests/helpers.py): the longest sum inside a layer is the MLP's second GEMM (I terms;
# q k v and the head's decoder sum D, attention 11 positions); a hidden state after layer l went
# through l + 1 stages (embeddings, then l layers), the logits through L + 2 (and the MLM head).
# The masked loss also sums the V-term softmax.
LAYER = dict(reduction=max(D, I))

# model_type -> (config class, MLM class, bare encoder class, eps, type_vocab_size, pad id)
HF = {
    "roberta": (transformers.RobertaConfig, transformers.RobertaForMaskedLM, transformers.RobertaModel, 1e-5, 1, 1),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForMaskedLM, transformers.XLMRobertaModel, 1e-5, 1, 1),
    "bert": (transformers.BertConfig, transformers.BertForMaskedLM, transformers.BertModel, 1e-12, 2, 0),
}


def hf_config(model_type: str, **kw):
    cfg_cls, _, _, eps, types, pad = HF[model_type]
    args = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=I,
                max_position_embeddings=P, type_vocab_size=types, layer_norm_eps=eps, pad_token_id=pad)
    args.update(kw)
    return cfg_cls(**args)


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1.0 + noise if "norm" in name.lower() and name.endswith("weight") else noise)
    return module.eval()


def hf_batch(pad: int, seed: int = 1):
    """Three sequences, two right-padded, with their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, n in ((1, 6), (2, 9)):
        ids[row, n:] = pad
        mask[row, n:] = 0
    return ids, mask


# ---- A pipeline step run in a forked rank ------------------------------------------------------

def _run_step_rank(rank, module, config_file, overrides):
    import importlib

    from ds_minimodel.config import load_config

    mod = importlib.import_module(f"ds_minimodel.steps.{module}")
    cls = {"adapt": "AdaptConfig", "minipost": "MiniPostConfig", "finetune": "FinetuneConfig"}[module]
    import ds_minimodel.config as config

    cfg = load_config(getattr(config, cls), REPO / config_file, overrides)
    mod.run(cfg, str(REPO / "ds_configs/z0.json"))


def run_step(module, config_file, *overrides):
    run_ranks(_run_step_rank, 1, args=(module, config_file, list(overrides)))


# ---- Run-directory lock holders in their own processes -----------------------------------------

# The environment of the holders and launches: run_lock's own settings removed, so that each test
# sets the mode it means.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
for _key in (run_lock.MODE_ENV, run_lock.STALE_ENV):
    ENV.pop(_key, None)

# A process that takes the lock, says "held", then: sleeps (hold), exits without releasing
# (exit), or releases and exits (release). Exit 3 and "lost" if its lease is taken over.
HOLDER = """
import sys, time
from ds_minimodel.training.run_lock import RunLock
directory, mode, stale, then = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
lock = RunLock(directory, mode=mode, stale_after_s=stale, heartbeat_s=min(stale / 4, 1.0)).acquire()
try:  # "held" inside: on a loaded machine the takeover's SIGINT may come before the sleep starts
    print("held", lock.mechanism, flush=True)
    if then == "release":
        lock.release()
    if then == "hold":
        time.sleep(120)
except KeyboardInterrupt:
    print("lost", flush=True)
    sys.exit(130)
"""


def holder(directory, mode="auto", stale=60.0, then="hold", sigint="default") -> subprocess.Popen:
    """A process holding the run lock of `directory`. `sigint`: "default" (Python installs its
    KeyboardInterrupt handler) or "ignore" (as in a background job of a non-interactive shell);
    set explicitly, so the test does not depend on how pytest itself was started."""
    disposition = {"default": signal.SIG_DFL, "ignore": signal.SIG_IGN}[sigint]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), mode, str(stale), then], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
    line = proc.stdout.readline()
    assert line.startswith("held"), f"holder failed: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _launch_adapt(rank, argv):
    from ds_minimodel.cli.adapt import main

    main(argv)


def in_process_runner(calls):
    """A study's runner (experiments.train_runs) without a subprocess: the same adapt command,
    forked in-process; each command is appended to `calls`."""
    from tests.distributed import run_ranks

    def run(cmd, log):
        assert cmd[1:3] == ["-m", "ds_minimodel.cli.adapt"], cmd
        calls.append(cmd)
        run_ranks(_launch_adapt, 1, args=(cmd[3:],))
        return 0.0
    return run
