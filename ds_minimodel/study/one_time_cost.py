"""One-time costs: compute a method spends once, before its first step-2 step, that standard
adaptation does not. Today that is FOCUS (adapt.init=focus): its auxiliary fastText model, trained
on the target text, and the combination of source rows (steps/adapt/focus.py; the FLOPs are
method/focus_cost.py's estimate, the wall-clock is measured). The step-2 curves leave it out, so a
"+focus" method's ratio alone flatters it; the study reports each such ratio twice:

- without the cost: the method's curve as trained (the ratio every other line prints);
- with it: the cost added to every point of the method's FLOP curve (and, where the runs recorded
  it, of its wall-clock curve), then the same matching and the same interval. A crossing moves by
  exactly the cost (the metric values, hence the fit and the interpolation, do not change), so the
  point estimate is baseline FLOPs / (method FLOPs to target + cost); a method whose start already
  meets the target now meets it at the cost, not at 0 FLOPs.

Where the costs come from: each run's pack.json (adapt records `focus_flops` and `focus_seconds`
in its init record). A run without them (no final pack yet, or adapted before they were recorded)
has its init rebuilt as the study's init point is (runs.init_record): the FLOPs are the same (the
estimate depends only on the corpus, the tokenizers and fastText's settings), the seconds are this
machine's, now, and are labelled so.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ds_minimodel.study.bootstrap import MethodScores
from ds_minimodel.study.matching import attach_bootstrap
from ds_minimodel.study.runs import INIT_TAG, StudyRun, init_record

ONE_TIME_INITS = ("focus",)  # adapt.init values with a one-time cost


def one_time_costs(opened: dict[str, list[StudyRun]], log: Callable[[str], None] = print) -> dict[str, dict]:
    """{method name: {"flops": {seed: FLOPs}, "seconds": {seed: s}, "source": {seed: where from}}}
    for every method whose runs started with a one-time-cost init; {} when none did."""
    costs = {}
    for name, runs in opened.items():
        if not any(r.config.adapt.init in ONE_TIME_INITS for r in runs):
            continue
        flops, seconds, source = {}, {}, {}
        for r in runs:
            prov = r.info.provenance or {}
            if "focus_flops" in prov:
                record, source[r.seed] = prov, "recorded by the run"
            else:
                log(f"[one-time cost] {name} seed {r.seed}: no focus_flops in its pack record; rebuilding its "
                    "FOCUS init to measure it")
                record, source[r.seed] = init_record(r), "measured again by the study"
            flops[r.seed] = float(record["focus_flops"])
            seconds[r.seed] = float(record["focus_seconds"]) if record.get("focus_seconds") is not None else None
        costs[name] = {"init": runs[0].config.adapt.init, "flops": flops, "seconds": seconds, "source": source}
    return costs


def _mean(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def with_one_time_costs(methods: dict[str, MethodScores], costs: dict[str, dict],
                        match: Callable[[dict[str, MethodScores]], tuple[dict, dict]]) -> dict[str, dict]:
    """Each costed method's matching with its one-time cost added to every point of each seed's
    FLOP curve (and wall-clock curve where every seed recorded its seconds). `match` is the study's
    own: (matched_compute's result, bootstrap_ratios' result) for a set of MethodScores, so the
    ratio and interval are found exactly as for the curves without the cost (the same bootstrap
    seed draws the same replicates), and the interval is kept or withheld by compare's rule."""
    costs = {name: c for name, c in costs.items() if name in methods}
    if not costs:
        return {}
    shifted = dict(methods)
    for name, c in costs.items():
        m = methods[name]
        add_flops = np.array([c["flops"][s] for s in m.seeds])[:, None]
        secs = [c["seconds"].get(s) for s in m.seeds]
        add_seconds = np.array([0.0 if v is None else v for v in secs])[:, None]
        shifted[name] = dataclasses.replace(m, flops=m.flops + add_flops,
                                            seconds=m.seconds + (0.0 if None in secs else add_seconds))
    matched, boot = match(shifted)
    attach_bootstrap(matched, boot)
    out = {}
    for name, c in costs.items():
        e = matched["methods"][name]
        seconds = _mean(c["seconds"].values())
        note = e.get("note", "")
        if e.get("outcome", "ratio") == "ratio" and e["at_first_point"] and methods[name].tags[0] == INIT_TAG:
            note = "its start (the FOCUS init, at its one-time cost) meets the target"
        out[name] = {"init": c["init"], "cost_flops": _mean(c["flops"].values()), "cost_seconds": seconds,
                     "source": sorted(set(c["source"].values())),
                     "reached": e["reached"], "outcome": e.get("outcome"), "ratio_bound": e.get("ratio_bound"),
                     "total_flops": e["total_flops"], "flops_to_target": e["flops_to_target"],
                     "seconds_to_target": e["seconds_to_target"] if seconds is not None else None,
                     "ratio": e["ratio_value"], "interval": e["interval_flops"], "n": e["interval_defined"],
                     "replicates": e["interval_replicates"], "interval_note": e.get("interval_note"),
                     "ratio_seconds": e["ratio_seconds"] if seconds is not None else None, "note": note}
    return out
