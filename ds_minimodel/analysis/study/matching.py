"""Matched-compute math (pure): the first crossing of a target metric and the compute ratios.

Interpolation (what `first_crossing` assumes). A metric is measured only at checkpoints, so
where exactly a curve crosses the target is unknown between two of them. Let point j be the
first, in order of compute, whose metric is >= target. Then every earlier point is below the
target, in particular point j-1, and the crossing is put on the straight line between them:

    x* = x[j-1] + (target - m[j-1]) / (m[j] - m[j-1]) * (x[j] - x[j-1])

for x = FLOPs, wall-clock seconds and step alike (one interpolation parameter). This is the
least-assuming estimate; it always lies in (x[j-1], x[j]], so the error is at most one
checkpoint interval, which is reported as `flops_bracket`. When j is the curve's first point
there is nothing earlier to interpolate from and x* = x[0]: an upper bound (`at_first_point`).
A later dip below the target does not matter (first crossing); a curve that never reaches the
target is "not reached" and gets no ratio. The crossing is monotone in the target: a higher
target is never reached earlier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ds_minimodel.errors import InvalidValueError


@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint of a run (or its initial embeddings: tag "init", step 0)."""
    step: int
    flops: int  # cumulative step-2 FLOPs (meta.json "loop")
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


def first_crossing(points: list[Point], target: float) -> Crossing:
    """The first point of the curve at which metric >= target, linearly interpolated from the
    point before it. `points` are in training order (checked)."""
    _check_curve(points, "curve")
    for j, p in enumerate(points):
        if p.metric >= target:
            if j == 0:
                return Crossing(True, float(p.flops), float(p.seconds), float(p.step),
                                (float(p.flops), float(p.flops)), at_first_point=True)
            a = points[j - 1]  # a.metric < target <= p.metric, so 0 < t <= 1
            t = (target - a.metric) / (p.metric - a.metric)
            return Crossing(True, a.flops + t * (p.flops - a.flops), a.seconds + t * (p.seconds - a.seconds),
                            a.step + t * (p.step - a.step), (float(a.flops), float(p.flops)))
    return Crossing(False)


def _ratio(baseline: float | None, method: float | None) -> float | None:
    if baseline is None or method is None or method <= 0 or baseline <= 0:
        return None
    return baseline / method


def matched_compute(curves: dict[str, list[Point]], baseline: str = "full", fraction: float = 1.0,
                    baseline_at: str = "crossing") -> dict:
    """Compute (FLOPs and wall-clock) each curve needs to first reach fraction * the baseline's
    final metric, and its ratio to the baseline's.

    baseline_at: "crossing" (default) compares with the baseline's own first crossing of the
    same target, interpolated the same way; "final" with the baseline's whole run (its last point).
    A ratio is None when either side did not reach the target, or reached it at 0 compute.
    """
    if baseline not in curves:
        raise InvalidValueError(f"baseline {baseline!r} is not among the runs ({', '.join(curves)})")
    if not (math.isfinite(fraction) and fraction > 0):
        raise InvalidValueError(f"fraction must be a positive number, got {fraction}")
    if baseline_at not in ("crossing", "final"):
        raise InvalidValueError(f"baseline_at must be 'crossing' or 'final', got {baseline_at!r}")
    for name, pts in curves.items():
        _check_curve(pts, name)
    base_final = curves[baseline][-1].metric
    target = fraction * base_final
    base_cross = first_crossing(curves[baseline], target)
    if baseline_at == "final":
        ref_flops, ref_seconds = float(curves[baseline][-1].flops), float(curves[baseline][-1].seconds)
    else:
        ref_flops, ref_seconds = base_cross.flops, base_cross.seconds
    methods = {}
    for name, pts in curves.items():
        c = first_crossing(pts, target)
        entry = {
            "final_metric": pts[-1].metric, "best_metric": max(p.metric for p in pts),
            "steps": pts[-1].step, "total_flops": pts[-1].flops, "total_seconds": pts[-1].seconds,
            "points": len(pts), "reached": c.reached, "flops_to_target": c.flops,
            "seconds_to_target": c.seconds, "step_to_target": c.step,
            "flops_bracket": list(c.flops_bracket) if c.flops_bracket else None,
            "at_first_point": c.at_first_point,
            "ratio_flops": _ratio(ref_flops, c.flops), "ratio_seconds": _ratio(ref_seconds, c.seconds),
        }
        if not c.reached:
            entry["note"] = f"never reached {target:.4g} (best {entry['best_metric']:.4g})"
        elif c.flops == 0:
            entry["note"] = "reached at initialization (0 FLOPs): no ratio"
        elif c.at_first_point:
            entry["note"] = "reached by the first checkpoint: its compute is an upper bound"
        if c.reached and not ref_flops:
            entry["ratio_flops"] = entry["ratio_seconds"] = None
            why = "never reached the target" if ref_flops is None else "reached it at 0 FLOPs"
            entry.setdefault("note", f"the baseline {why}: no ratio")
        methods[name] = entry
    return {"baseline": baseline, "fraction": fraction, "baseline_at": baseline_at,
            "baseline_final_metric": base_final, "target": target,
            "baseline_flops_to_target": ref_flops, "baseline_seconds_to_target": ref_seconds,
            "methods": methods}
