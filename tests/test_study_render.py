"""What the study prints (render.py, through compare.py's study.json fields): every interval with
the count of replicates that define it, no interval under 90% of them, and the censored outcomes
(not reached, reached at 0 FLOPs, target met at the start) in words and bounds, never as 0.00 or
inf. The curves are made by hand so that each outcome and its bound are known."""

import json
import math

import numpy as np
import pytest

from ds_minimodel.study.bootstrap import percentile_interval
from ds_minimodel.study.compare import json_safe, summarize
from ds_minimodel.study.matching import attach_bootstrap
from ds_minimodel.study.matching import Point, matched_compute
from ds_minimodel.study.render import markdown, summary_lines


def curve(*pairs):
    return [Point(i + 1, f, f / 1000, m, f"step_{i + 1}") for i, (f, m) in enumerate(pairs)]


def study(curves: dict, replicates: dict, level: float = 0.95) -> dict:
    """study.json as compare.py writes it, for one metric (accuracy), with these bootstrap
    replicates (the ratios of each method; NaN: undefined) in place of a real bootstrap."""
    matched = matched_compute(curves)
    boot = {"methods": {}}
    for name in curves:
        r = np.asarray(replicates.get(name, [1.0] * 1000), dtype=np.float64)
        boot["methods"][name] = {"interval": list(percentile_interval(r, level)), "ratios": r,
                                 "replicates": len(r), "undefined": int(np.isnan(r).sum()),
                                 "not_reached": int((r == 0).sum()), "at_zero_flops": int(np.isinf(r).sum())}
    attach_bootstrap(matched, boot)
    metric = {"metric": "accuracy", "better": "higher", "matched": matched, "references": {}, "units": 20,
              "bootstrap": {"replicates": 1000, "seed": 1, "level": level, "seed_resampling": "paired",
                            "unit_resampling": True}}
    result = {"metric": "accuracy", "level": level, "metrics": {"accuracy": metric},
              "summary": summarize({"accuracy": metric}, [n for n in curves if n != "full"]),
              "runs": {n: [{"seed": 0}] for n in curves}, "method": "", "plots": [],
              "bootstrap_stream": {"stream": 1, "language": "ny", "bootstrap_seed": 0}}
    return json.loads(json.dumps(json_safe(result)))  # what study.json holds (inf as "inf", NaN as null)


FULL = curve((100, 0.3), (200, 0.5), (300, 0.6))  # reaches its final 0.6 at 300 FLOPs


def test_a_defined_ratio_keeps_its_line_and_says_how_many_replicates_define_the_interval():
    mini = curve((40, 0.4), (80, 0.5), (120, 0.6))  # 0.6 at 120 FLOPs: ratio 300 / 120 = 2.5
    reps = [2.0] * 450 + [2.5] * 450 + [3.0] * 100
    line = summary_lines(study({"full": FULL, "mini": mini}, {"mini": reps}))[-1]
    assert line == "study mini: compute ratio 2.50 (95% interval 2.00-3.00) at matched accuracy; " \
                   "n = 1000 of 1000 replicates"
    # 100 undefined replicates (10%): the interval still stands, over the 900 that define it.
    line = summary_lines(study({"full": FULL, "mini": mini}, {"mini": reps[:900] + [math.nan] * 100}))[-1]
    assert line == "study mini: compute ratio 2.50 (95% interval 2.00-2.50) at matched accuracy; " \
                   "n = 900 of 1000 replicates"
    # 101 undefined: fewer than 90% define it, no interval, and the line says why.
    s = study({"full": FULL, "mini": mini}, {"mini": reps[:899] + [math.nan] * 101})
    assert summary_lines(s)[-1] == "study mini: compute ratio 2.50 at matched accuracy; no 95% interval: only " \
                                   "n = 899 of 1000 replicates define a ratio (under 90%)"
    assert s["metrics"]["accuracy"]["matched"]["methods"]["mini"]["interval_flops"] is None
    row = next(x for x in markdown(s).splitlines() if x.startswith("| mini |"))
    assert "| 2.50 | none: n = 899 of 1000 (under 90%) |" in row, row


def test_not_reached_is_a_bound_never_zero():
    mini = curve((40, 0.4), (80, 0.5), (120, 0.55))  # never 0.6: the ratio is below 300 / 120
    s = study({"full": FULL, "mini": mini}, {"mini": [0.0] * 100 + [1.5] * 900})
    line = summary_lines(s)[-1]
    assert line == "study mini: compute ratio < 2.50 (a bound: not reached within 120 FLOPs) (95% interval " \
                   "not reached to 1.50) at matched accuracy; n = 1000 of 1000 replicates"
    md = markdown(s)
    assert "0.00" not in md
    row = next(x for x in md.splitlines() if x.startswith("| mini |"))
    assert "| < 2.50 (not reached) | not reached to 1.50 (n = 1000 of 1000) |" in row, row


def test_a_target_met_at_the_start_prints_no_ratio_and_no_interval():
    init = Point(0, 0, 0.0, 0.6, "init")
    s = study({"full": [init] + FULL, "mini": [init] + curve((40, 0.7))}, {"mini": [math.nan] * 1000})
    line = summary_lines(s)[-1]
    assert line == "study mini: no compute ratio (target met at the start) at matched accuracy; no 95% interval " \
                   "(n = 0 of 1000 replicates define a ratio)"
    row = next(x for x in markdown(s).splitlines() if x.startswith("| mini |"))
    assert "| no ratio (target met at the start) | none: n = 0 of 1000 |" in row and "inf" not in row, row


def test_reached_at_zero_flops_is_no_finite_ratio():
    s = study({"full": [Point(0, 0, 0.0, 0.2, "init")] + FULL, "mini": [Point(0, 0, 0.0, 0.7, "init")] + curve((40, 0.7))},
              {"mini": [math.inf] * 1000})
    line = summary_lines(s)[-1]
    assert line == "study mini: no finite compute ratio (reached at 0 FLOPs) (95% interval: reached at 0 FLOPs in " \
                   "every replicate) at matched accuracy; n = 1000 of 1000 replicates"


def test_sweep_plot_names_the_studies_level(monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ds_minimodel.study.render import plot_sweep

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    point = {"k": 1, "vocab": 8000, "vocab_size": 8000, "steps": 10, "step_flops_ratio": 2.0,
             "step_seconds_ratio": 1.9, "head_share": 0.3,
             "accuracy": {"ratio": 1.5, "interval": [1.0, 2.0], "steps_to_target": 10}}
    plot_sweep({"vocabs": [8000], "ks": [1], "level": 0.9, "points": [point]}, tmp_path / "sweep.png")
    titles = [ax.get_title() for ax in figures[0].axes]
    assert any("90%" in t for t in titles) and not any("95%" in t for t in titles), titles


def test_an_enforced_transfer_check_that_failed_withholds_every_ratio_in_study_md():
    mini = curve((40, 0.4), (80, 0.5), (120, 0.6))  # ratio 2.50 when shown
    s = study({"full": FULL, "mini": mini}, {"mini": [2.5] * 1000})
    why = "the standard baseline did not transfer: agreement 0.04 -> 0.08 (95% interval -0.05 to +0.12)"
    for required, passed, shown in ((True, False, False), (False, False, True), (True, True, True)):
        s["transfer_check"] = {"required": required, "passed": passed, "why": why, "baseline_gain": {}}
        md = markdown(s)
        row = next(x for x in md.splitlines() if x.startswith("| mini |"))
        assert ("| 2.50 |" in row) == shown and ("compute ratio 2.50" in md) == shown, (required, passed, md)
        assert (f"- study: no compute ratio: {why}" in md) == (not shown)
        if not shown:
            assert "| withheld | withheld |" in row and row.count("withheld") == 3
