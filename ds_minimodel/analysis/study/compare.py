"""Score every checkpoint of every run, match compute, and write the study's outputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

from ds_minimodel.analysis.study.matching import Point, matched_compute
from ds_minimodel.analysis.study.render import markdown, plot_curves
from ds_minimodel.analysis.study.runs import open_runs
from ds_minimodel.analysis.study.scoring import ScoreCache, collect_points
from ds_minimodel.training.checkpoint import write_atomic


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def compare_runs(runs: dict[str, str | Path], scorer, out_dir: str | Path, *, baseline: str = "full", fraction: float = 1.0,
          baseline_at: str = "crossing", include_init: bool = True, log: Callable[[str], None] = print) -> dict:
    """Score every checkpoint of every run, compute the matched-compute ratios and write
    study.json, study.md, metric_vs_flops.png and metric_vs_wallclock.png into out_dir."""
    opened = open_runs(runs, baseline)
    # Validate the numbers before the (slow) scoring.
    matched_compute({n: [Point(0, 0, 0.0, 0.0)] for n in opened}, baseline, fraction, baseline_at)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ScoreCache(out_dir / "score_cache.json", scorer.identity)
    curves = {}
    for name, run in opened.items():
        log(f"[{name}] {len(run.tags)} checkpoints in {run.dir} ({run.method})")
        curves[name] = collect_points(run, scorer, cache, include_init, log)
    matched = matched_compute(curves, baseline, fraction, baseline_at)
    language = opened[baseline].info.language
    references = scorer.references(language)
    plot_refs = {"majority-class chance": references["chance_majority"]} if "chance_majority" in references else \
        {"chance": references["chance"]} if "chance" in references else {}
    plots = plot_curves(curves, matched, out_dir, scorer.metric, plot_refs)
    result = {
        "metric": scorer.metric, "scorer": scorer.identity, "references": references,
        "include_init_point": include_init,
        "runs": {n: {"dir": str(r.dir), "method": r.method, "language": r.info.language,
                     "steps": r.config.train.steps, "seed": r.config.train.seed,
                     "model_dir": r.config.adapt.model_dir, "checkpoints": r.tags} for n, r in opened.items()},
        "curves": {n: [dataclasses.asdict(p) for p in pts] for n, pts in curves.items()},
        "matched": matched,
        "interpolation": "first crossing of target = fraction * baseline final metric; linear in FLOPs, wall-clock "
                         "and step between the last point below the target and the first at or above it; the "
                         "first point itself (an upper bound) when it is already at or above the target",
        "plots": [p.name for p in plots],
    }
    result = _json_safe(result)

    write_atomic(out_dir / "study.json", json.dumps(result, indent=2))
    write_atomic(out_dir / "study.md", markdown(result))
    return result
