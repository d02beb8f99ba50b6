"""Matched-compute math (pure): a monotone fit of a curve, where it crosses a target metric, and
the compute ratios.

The curve. A method's curve is its metric at each checkpoint averaged over its seeds (all seeds
share the checkpoint steps; FLOPs and seconds are averaged too: bootstrap.py builds it), so the
noise of one run is already reduced. Even so, one first crossing of a noisy curve rewards whichever run
fluctuates upward: a single lucky checkpoint decides it.

The fit (`isotonic`). The crossing is therefore taken on the least-squares *monotone* fit of the
curve: non-decreasing in compute for a metric where higher is better (accuracy, retrieval),
non-increasing where lower is better (MLM loss), by pool-adjacent-violators with equal weight per
checkpoint. Why isotonic and not a smoother or a parametric learning curve: it assumes only that
more training does not make the embeddings worse in expectation, has no bandwidth or functional
form to choose, leaves a curve that already is monotone untouched, and turns a dip (or an early
spike) into a flat stretch at the pooled mean of the points it spans, so one lucky point can no
longer decide the crossing alone. `fit="raw"` keeps the old behaviour (the raw points).

Interpolation (`first_crossing`). The metric is known only at checkpoints. Let point j be the
first, in order of compute, whose (fitted) metric reaches the target (>= for higher-is-better,
<= for lower-is-better). The crossing is put on the straight line between points j-1 and j:

    x* = x[j-1] + (target - m[j-1]) / (m[j] - m[j-1]) * (x[j] - x[j-1])

for x = FLOPs, wall-clock seconds and step alike (one interpolation parameter). It lies in
(x[j-1], x[j]], so the error is at most one checkpoint interval (`flops_bracket`). When j is the
first point there is nothing earlier to interpolate from and x* = x[0]: an upper bound
(`at_first_point`). On a monotone fit the first crossing is the only one; on raw points a later
dip does not matter. A curve that never reaches the target is "not reached" and gets no ratio.
The crossing is monotone in the target: a harder target is never reached earlier.

The target is fraction x the baseline's final (seed-averaged, unfitted) metric. The baseline's
isotonic fit always reaches its own final value (the fit's last point is the largest mean of a
suffix of the curve, so at least the last point), so with fraction <= 1 the baseline has a
crossing.

Outcomes (each method's `outcome`; `ratio_value` as one number for the bootstrap's order
statistics in brackets):
- "ratio": the baseline's FLOPs to the target over the method's [that ratio];
- "not_reached": the method's fit never reaches the target within its budget. A censored value,
  not a zero: the method would need more than its whole budget, so its ratio is below
  `ratio_bound` = the baseline's FLOPs / the method's total FLOPs [0.0: the low end];
- "at_zero_flops": the method's own start (0 FLOPs) already meets the target while the
  baseline's does not: it needs no step-2 compute, no finite ratio [+inf: the high end];
- "met_at_start": the baseline's start already meets the target: it needs no compute, so no
  method has a ratio [NaN]. Decided on the raw (unfitted) start point, not on the fit: the fit
  pools the start with later points, so a later dip in the baseline's curve pulls its fitted start
  below the target while a method with the very same start keeps it there, and the same start
  would read "reached at 0 FLOPs" for one and not for the other. A raw start never misses the
  target where its fit meets it (the fit's first value is the lowest prefix mean, for a
  higher-is-better metric), so this rule also covers a fit that crosses at 0 FLOPs;
- "no_baseline": the baseline's fit never reaches the target (fraction > 1) [NaN].
The rule is applied here, so it holds in every bootstrap replicate as in the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ds_minimodel.errors import InvalidValueError

BETTER = ("higher", "lower")
FITS = ("isotonic", "raw")


@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint of a run (or its initial embeddings: tag "init", step 0)."""
    step: int
    flops: float  # cumulative step-2 FLOPs (meta.json "loop"; a seed-averaged curve's mean over its seeds)
    seconds: float  # cumulative training wall-clock (meta.json "loop" train_seconds)
    metric: float
    tag: str = ""


@dataclass(frozen=True)
class Crossing:
    """Where a curve first reaches a target (see the module docstring for the interpolation)."""
    reached: bool
    flops: float | None = None
    seconds: float | None = None
    step: float | None = None
    # FLOPs of the two points the crossing lies between (equal when at the first point).
    flops_bracket: tuple[float, float] | None = None
    at_first_point: bool = False


def isotonic(values, increasing: bool = True) -> np.ndarray:
    """The least-squares monotone fit of `values` (equal weights), by pool-adjacent-violators:
    scan left to right, and whenever a block's mean breaks the order with the block before it,
    merge the two (their mean weighted by size) and check again."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise InvalidValueError(f"isotonic fit needs a 1-D sequence, got shape {y.shape}")
    if not increasing:
        return -isotonic(-y, True)
    means: list[float] = []
    sizes: list[int] = []
    for v in y:
        means.append(float(v))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m, n = means.pop(), sizes.pop()
            means[-1] = (means[-1] * sizes[-1] + m * n) / (sizes[-1] + n)
            sizes[-1] += n
    return np.repeat(np.array(means), sizes)


def _check_better(better: str) -> None:
    if better not in BETTER:
        raise InvalidValueError(f"better must be 'higher' or 'lower', got {better!r}")


def _check_curve(points: list[Point], name: str) -> None:
    if not points:
        raise InvalidValueError(f"curve {name!r} has no points")
    for a, b in zip(points, points[1:]):
        if not (b.step > a.step and b.flops >= a.flops and b.seconds >= a.seconds):
            raise InvalidValueError(f"curve {name!r} is not ordered by training progress: step {a.step} "
                                    f"({a.flops} FLOPs, {a.seconds} s) before step {b.step} ({b.flops} FLOPs, "
                                    f"{b.seconds} s)")
    for p in points:
        if not math.isfinite(p.metric):
            raise InvalidValueError(f"curve {name!r} has a non-finite metric at step {p.step}")


def fitted(points: list[Point], better: str = "higher", fit: str = "isotonic") -> list[Point]:
    """The curve with its metric replaced by its monotone fit (`fit="raw"`: unchanged)."""
    _check_better(better)
    if fit not in FITS:
        raise InvalidValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if fit == "raw":
        return list(points)
    values = isotonic([p.metric for p in points], increasing=better == "higher")
    return [replace(p, metric=float(v)) for p, v in zip(points, values)]


def first_crossing(points: list[Point], target: float, better: str = "higher") -> Crossing:
    """The first point of the curve whose metric reaches target (>= when higher is better, <=
    when lower is), linearly interpolated from the point before it. `points` are in training
    order (checked)."""
    _check_better(better)
    _check_curve(points, "curve")
    for j, p in enumerate(points):
        if (p.metric >= target) if better == "higher" else (p.metric <= target):
            if j == 0:
                return Crossing(True, float(p.flops), float(p.seconds), float(p.step),
                                (float(p.flops), float(p.flops)), at_first_point=True)
            a = points[j - 1]  # a is on the wrong side of the target, p on the right one: 0 < t <= 1
            t = (target - a.metric) / (p.metric - a.metric)
            return Crossing(True, a.flops + t * (p.flops - a.flops), a.seconds + t * (p.seconds - a.seconds),
                            a.step + t * (p.step - a.step), (float(a.flops), float(p.flops)))
    return Crossing(False)


# An interval needs this share of the bootstrap replicates to define a ratio (not NaN).
MIN_DEFINED = 0.9


def interval_withheld(defined: int, replicates: int) -> bool:
    """Too few replicates define a ratio for their interval to stand for the estimate's."""
    return defined < MIN_DEFINED * replicates


def _meets(metric: float, target: float, better: str) -> bool:
    return metric >= target if better == "higher" else metric <= target


def _ratio(baseline: float | None, method: float | None) -> float | None:
    if baseline is None or method is None or method <= 0 or baseline <= 0:
        return None
    return baseline / method


def ratio_value(entry: dict, baseline_flops: float | None) -> float:
    """A method's FLOP ratio as one number that orders every outcome, for the bootstrap's order
    statistics: the ratio when defined; 0.0 when the method never reached the target (a censored
    value, its ratio below `ratio_bound`: 0 is the conservative end); +inf when it reached it at
    0 FLOPs (its initial embeddings already do); NaN when no ratio is meaningful (the target was
    met at the start, or the baseline has no crossing). People read the outcome, not this number
    (render.py)."""
    if entry.get("outcome") == "met_at_start" or not baseline_flops:
        return math.nan
    if not entry["reached"]:
        return 0.0
    if entry["flops_to_target"] == 0:
        return math.inf
    return baseline_flops / entry["flops_to_target"]


def matched_compute(curves: dict[str, list[Point]], baseline: str = "full", fraction: float = 1.0,
                    baseline_at: str = "crossing", better: str = "higher", fit: str = "isotonic") -> dict:
    """Compute (FLOPs and wall-clock) each curve needs to first reach fraction * the baseline's
    final metric on its monotone fit, and its ratio to the baseline's.

    baseline_at: "crossing" (default) compares with the baseline's own crossing of the same
    target, found the same way; "final" with the baseline's whole run (its last point).
    A ratio is None when either side did not reach the target, or reached it at 0 compute; each
    method's `outcome` says which (the module docstring).
    """
    if baseline not in curves:
        raise InvalidValueError(f"baseline {baseline!r} is not among the runs ({', '.join(curves)})")
    if not (math.isfinite(fraction) and fraction > 0):
        raise InvalidValueError(f"fraction must be a positive number, got {fraction}")
    if baseline_at not in ("crossing", "final"):
        raise InvalidValueError(f"baseline_at must be 'crossing' or 'final', got {baseline_at!r}")
    for name, pts in curves.items():
        _check_curve(pts, name)
    fits = {name: fitted(pts, better, fit) for name, pts in curves.items()}
    base_final = curves[baseline][-1].metric
    target = fraction * base_final
    base_cross = first_crossing(fits[baseline], target, better)
    start = curves[baseline][0]
    met_at_start = start.flops == 0 and _meets(start.metric, target, better)
    if baseline_at == "final":
        ref_flops, ref_seconds = float(curves[baseline][-1].flops), float(curves[baseline][-1].seconds)
    else:
        ref_flops, ref_seconds = base_cross.flops, base_cross.seconds
    pick = max if better == "higher" else min
    methods = {}
    for name, pts in curves.items():
        c = first_crossing(fits[name], target, better)
        entry = {
            "final_metric": pts[-1].metric, "best_metric": pick(p.metric for p in pts),
            "fit": [p.metric for p in fits[name]],
            "steps": pts[-1].step, "total_flops": pts[-1].flops, "total_seconds": pts[-1].seconds,
            "points": len(pts), "reached": c.reached, "flops_to_target": c.flops,
            "seconds_to_target": c.seconds, "step_to_target": c.step,
            "flops_bracket": list(c.flops_bracket) if c.flops_bracket else None,
            "at_first_point": c.at_first_point,
            "ratio_flops": _ratio(ref_flops, c.flops), "ratio_seconds": _ratio(ref_seconds, c.seconds),
        }
        entry["outcome"], entry["ratio_bound"] = "ratio", None
        if met_at_start:
            entry["outcome"] = "met_at_start"
            entry["ratio_flops"] = entry["ratio_seconds"] = None
            entry["note"] = (f"target met at the start: the baseline's initial {start.metric:.4g} already meets "
                             f"{target:.4g}, so no method has a ratio")
        elif not ref_flops:
            entry["outcome"] = "no_baseline"
            entry["ratio_flops"] = entry["ratio_seconds"] = None
            entry["note"] = "the baseline never reached the target: no ratio"
        elif not c.reached:
            entry["outcome"] = "not_reached"
            entry["ratio_bound"] = ref_flops / pts[-1].flops if pts[-1].flops > 0 else None
            entry["note"] = (f"not reached within {pts[-1].flops:.3g} FLOPs (target {target:.4g}, best "
                             f"{entry['best_metric']:.4g})")
        elif c.flops == 0:
            entry["outcome"] = "at_zero_flops"
            entry["note"] = "reached at 0 FLOPs (its own start meets the target): no finite ratio"
        elif c.at_first_point:
            entry["note"] = "reached by the first checkpoint: its compute is an upper bound"
        entry["ratio_value"] = ratio_value(entry, ref_flops)
        methods[name] = entry
    return {"baseline": baseline, "fraction": fraction, "baseline_at": baseline_at, "better": better, "fit": fit,
            "baseline_final_metric": base_final, "target": target, "met_at_start": met_at_start,
            "baseline_flops_to_target": ref_flops, "baseline_seconds_to_target": ref_seconds,
            "methods": methods}


def attach_bootstrap(matched: dict, boot: dict) -> None:
    """Each method's bootstrap into its matched entry: the interval, how many replicates define a
    ratio (not NaN) and the replicates themselves (the average over languages resamples them).
    No interval where fewer than MIN_DEFINED of the replicates define a ratio, or where the
    estimate itself has none (an interval of the few replicates that do would stand for nothing
    the study reports); `interval_note` then says why."""
    for name, b in boot["methods"].items():
        e = matched["methods"][name]
        r = np.asarray(b["ratios"], dtype=np.float64)
        defined, total = int((~np.isnan(r)).sum()), len(r)
        # The replicates the interval comes from (the multiplier bootstrap's where it is used).
        interval_defined = b.get("interval_defined", defined)
        interval, why = b.get("interval"), b.get("why")
        if interval is not None and any(x is None or math.isnan(x) for x in interval):
            interval = None
        if interval_withheld(interval_defined, total):
            interval, why = None, (f"only n = {interval_defined} of {total} replicates define a ratio "
                                   f"(under {MIN_DEFINED:.0%})")
        elif e["outcome"] in ("met_at_start", "no_baseline"):
            interval, why = None, None
        e["interval_flops"], e["interval_defined"], e["interval_replicates"] = interval, interval_defined, total
        e["interval_method"] = b.get("interval_method")
        if interval is None and why:
            e["interval_note"] = why
        e["bootstrap"] = {"undefined": total - defined, "not_reached": int((r == 0).sum()),
                          "at_zero_flops": int(np.isinf(r).sum()), "ratios": r.tolist()}
