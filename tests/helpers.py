"""Float tolerances for tests that compare an fp32 computation with an independent reference.

Why a derived bound. Two correct fp32 implementations of the same math (ours and Hugging Face's,
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

So rtol = SAFETY * eps * sqrt(reduction) * depth * steps and atol = rtol * magnitude, e.g. 3.8e-6
relative for one stage of 64-term sums. This is loose against rounding (the measured worst case,
bench/tolerance_report.py, stays far below it on every ISA ATen and MKL offer) and tight against
bugs, whose errors are of the size of the values themselves: a dropped bias, a missing layer
norm or a wrong scale is off by 1e-2..1e0 relative.

Set DSM_TOLERANCE_LOG=path to append, per comparison, the largest error, the bound there and
their ratio (pass iff <= 1) as one JSON line; bench/tolerance_report.py tabulates the logs.
"""

from __future__ import annotations

import json
import math
import os

import torch

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
