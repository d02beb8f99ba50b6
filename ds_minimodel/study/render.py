"""The study's outputs people look at: the PNG curves, study.md and the summary lines."""

from __future__ import annotations

import math
from pathlib import Path

from ds_minimodel.study.full_models import markdown as full_models_section
from ds_minimodel.study.lr_pilot import markdown as lr_pilot_section
from ds_minimodel.study.matching import MIN_DEFINED, interval_withheld

METRIC_LABEL = {"accuracy": "target-language accuracy", "retrieval_top1": "En<->target retrieval top-1",
                "agreement": "agreement with the English answers (Cohen's kappa)",
                "raw_agreement": "share of verses answered as their English verse",
                "balanced_accuracy": "target-language class-balanced accuracy",
                "mlm_loss": "target-language MLM loss (full model, plugged)",
                "row_precision": "row precision@1 against the known source rows"}
# How a summary line names the metric the compute is matched at.
MATCHED_AT = {"mlm_loss": "MLM loss", "balanced_accuracy": "balanced accuracy", "raw_agreement": "raw agreement",
              "row_precision": "row precision@1"}


def _label(metric: str) -> str:
    return METRIC_LABEL.get(metric, metric)


def _plot(study: dict, axis: str, path: Path, references: dict) -> Path:
    """One metric against FLOPs or wall-clock: per method the seed-mean curve, the min-max band of
    its seeds, the monotone fit (dashed) and the crossing of the target (x)."""
    import matplotlib  # here, not at the top: only the study's writer needs it, headless

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matched = study["matched"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, c in study["curves"].items():
        per_seed = [s["metric"] for s in c["per_seed"].values()]
        lo = [min(v) for v in zip(*per_seed)]
        hi = [max(v) for v in zip(*per_seed)]
        x = c["flops"] if axis == "flops" else c["seconds_mean"]
        line, = ax.plot(x, c["mean"], marker="o", ms=3, label=f"{name} (mean of {len(per_seed)} seeds)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
        ax.plot(x, c["fit"], ls="--", lw=1, color=line.get_color())
        m = matched["methods"][name]
        at = m[f"{axis}_to_target"]
        if m["reached"] and at is not None:
            ax.plot([at], [matched["target"]], marker="x", ms=10, mew=2, color=line.get_color())
    target = f"{matched['fraction']:g} x {matched['baseline']} final" if matched["fraction"] != 1 else \
        f"{matched['baseline']} final"
    ax.axhline(matched["target"], color="k", ls="--", lw=1, label=f"target: {target}")
    for label, value in references.items():
        ax.axhline(value, color="grey", ls=":", lw=1, label=label)
    metric = study["metric"]
    ax.set(xlabel="cumulative step-2 FLOPs" if axis == "flops" else "step-2 training wall-clock (s, mean of seeds)",
           ylabel=_label(metric),
           title=f"{_label(metric)} against step-2 {'compute' if axis == 'flops' else 'time'}\n"
                 "band: min-max over seeds; dashed: monotone fit; x: crossing of the target")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(metrics: dict[str, dict], out_dir: Path) -> list[Path]:
    """metric_vs_flops.png and metric_vs_wallclock.png for the transfer metric (the first),
    mlm_loss_vs_flops.png for the MLM loss when it was scored."""
    out = []
    for i, (metric, study) in enumerate(metrics.items()):
        refs = study.get("references") or {}
        plot_refs = {"majority-class chance": refs["chance_majority"]} if "chance_majority" in refs else \
            {"one class answered": refs["one_class_best"]} if "one_class_best" in refs else \
            {"one class answered": refs["one_class"]} if "one_class" in refs else \
            {"chance": refs["chance"]} if "chance" in refs else {}
        if i == 0:
            out.append(_plot(study, "flops", out_dir / "metric_vs_flops.png", plot_refs))
            out.append(_plot(study, "seconds", out_dir / "metric_vs_wallclock.png", plot_refs))
        else:
            out.append(_plot(study, "flops", out_dir / f"{metric}_vs_flops.png", plot_refs))
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, str):  # "inf" in study.json
        return v
    return format(v, spec)


def format_ratio(v) -> str:
    """A ratio from study.json for people: 2 decimals, inf, or n/a when undefined."""
    v = math.inf if v == "inf" else v
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, ".2f")


# How a ratio is read (matching.py's outcomes). An entry is a summary entry of study.json
# (compare.summarize), a sweep point's metric or an average over languages: "ratio", "interval",
# and where recorded "outcome", "ratio_bound", "total_flops", "n" and "replicates" (the bootstrap
# replicates that define a ratio, of all), "interval_note" (why no interval), "why" (the average's
# own reason). Entries written before outcomes were recorded read their outcome off the number.
NO_RATIO = {"met_at_start": "target met at the start", "no_baseline": "the baseline never reached the target",
            "undefined": "undefined"}


def _number(v) -> float:
    if v is None:
        return math.nan
    return math.inf if v == "inf" else float(v)


def outcome(entry: dict) -> str:
    if entry.get("outcome"):
        return entry["outcome"]
    v = _number(entry.get("ratio"))
    return "undefined" if math.isnan(v) else "at_zero_flops" if math.isinf(v) else \
        "not_reached" if v == 0 else "ratio"


def _has_ratio(entry: dict) -> bool:
    """Whether the estimate is a number, a bound or unbounded (not: no ratio at all)."""
    return outcome(entry) in ("ratio", "not_reached", "at_zero_flops")


def point_phrase(entry: dict) -> str:
    """The estimate in words: a number, a bound, or no ratio and why; never 0.00 or inf."""
    o = outcome(entry)
    if o == "ratio":
        return f"compute ratio {format_ratio(entry['ratio'])}"
    if o == "not_reached":
        why = entry.get("why") or (f"not reached within {entry['total_flops']:.3g} FLOPs"
                                   if entry.get("total_flops") is not None else "not reached")
        bound = entry.get("ratio_bound")
        return f"compute ratio < {bound:.2f} (a bound: {why})" if bound is not None else f"no compute ratio ({why})"
    if o == "at_zero_flops":
        return f"no finite compute ratio ({entry.get('why') or 'reached at 0 FLOPs'})"
    return f"no compute ratio ({entry.get('why') or NO_RATIO.get(o, o)})"


def _end(v) -> str:
    v = _number(v)
    return "not reached" if v == 0 else "reached at 0 FLOPs" if math.isinf(v) else format(v, ".2f")


def _interval_ends(interval) -> str:
    """LO-HI, or in words where an end is censored (0: not reached, inf: reached at 0 FLOPs)."""
    lo, hi = (_number(x) for x in interval)
    if all(0 < x < math.inf for x in (lo, hi)):
        return f"{lo:.2f}-{hi:.2f}"
    return f"{_end(lo)} in every replicate" if lo == hi else f"{_end(lo)} to {_end(hi)}"


def _shows_interval(entry: dict) -> bool:
    iv = entry.get("interval")
    return _has_ratio(entry) and iv is not None and not any(math.isnan(_number(x)) for x in iv)


def _ratio_phrase(entry: dict, metric: str, level: float, qualifier: str = "") -> str:
    """`compute ratio X.XX (95% interval LO-HI) at matched <metric>; n = K of N replicates` for a
    defined ratio; a bound, no finite ratio or no ratio in words otherwise, and no interval (saying
    why) where too few replicates define one. The study's, the sweep's and the average's lines."""
    pct = round(level * 100)
    at = f"at matched {MATCHED_AT.get(metric, metric)}{qualifier}"
    n, total = entry.get("n"), entry.get("replicates")
    count = f"n = {n} of {total} replicates" if n is not None and total else None
    point = point_phrase(entry)
    if _shows_interval(entry):
        ends = _interval_ends(entry["interval"])
        return f"{point} ({pct}% interval{':' if 'every' in ends else ''} {ends}) {at}" + (f"; {count}" if count else "")
    note = None if not _has_ratio(entry) else entry.get("interval_note")
    why = f": {note}" if note else f" ({count} define a ratio)" if count else ""
    return f"{point} {at}; no {pct}% interval{why}"


def ratio_line(method: str, entry: dict, metric: str, level: float) -> str:
    """`study <method>: compute ratio X.XX (95% interval LO-HI) at matched <metric>; n = K of N replicates`."""
    return f"study {method}: {_ratio_phrase(entry, metric, level)}"


def ratio_cell(entry: dict) -> str:
    """A table's compute-ratio cell."""
    o = outcome(entry)
    if o == "ratio":
        return format_ratio(entry["ratio"])
    if o == "not_reached":
        bound = entry.get("ratio_bound")
        why = f"a bound: {entry['why']}" if entry.get("why") else "not reached"
        return f"< {bound:.2f} ({why})" if bound is not None else why
    if o == "at_zero_flops":
        return "reached at 0 FLOPs"
    return f"no ratio ({entry.get('why') or NO_RATIO.get(o, o)})"


def interval_cell(entry: dict) -> str:
    """A table's interval cell, with the replicates that define it."""
    n, total = entry.get("n"), entry.get("replicates")
    count = f"n = {n} of {total}" if n is not None and total else ""
    if _shows_interval(entry):
        return _interval_ends(entry["interval"]) + (f" ({count})" if count else "")
    withheld = _has_ratio(entry) and n is not None and total and interval_withheld(n, total)
    return "none" + (f": {count}" if count else "") + (f" (under {MIN_DEFINED:.0%})" if withheld else "")


WITHHELD = "withheld"  # a ratio cell when the enforced transfer check failed


def withheld(result: dict) -> bool:
    """Whether the study's ratios are withheld: its transfer check was enforced and failed."""
    check = result.get("transfer_check") or {}
    return bool(check.get("required") and not check.get("passed"))


def _metric_section(study: dict, runs: dict, level: float, withhold: bool = False) -> list[str]:
    m = study["matched"]
    metric, base = study["metric"], m["baseline"]
    against = "own crossing of the target" if m["baseline_at"] == "crossing" else "whole run"
    b = study["bootstrap"]
    lines = [f"## {_label(metric)} ({metric}, {m['better']} is better)", "",
             f"Target: {m['fraction']:g} x the seed-averaged final {metric} of the baseline `{base}` "
             f"({m['baseline_final_metric']:.4f}) = **{m['target']:.4f}**. Baseline compute compared against: its "
             f"{against} ({_fmt(m['baseline_flops_to_target'], '.3e')} FLOPs, "
             f"{_fmt(m['baseline_seconds_to_target'], '.1f')} s). "
             # bootstrap.interval_description: how the interval was built (studies before it: the percentile one).
             + (b["description"].rstrip(".") if b.get("description") else
                f"Interval: {round(level * 100)}% percentile "
                f"bootstrap, {b['replicates']} replicates (stream {b['seed']}), resampling with replacement the seeds "
                f"({'paired across methods' if b['seed_resampling'] == 'paired' else 'independently per method'})"
                f"{' and the ' + str(study['units']) + ' units' if b['unit_resampling'] else ''}")
             + f"; n: the replicates that define a ratio, none under {MIN_DEFINED:.0%} of them.",
             "", "| method | seeds | steps | final (mean) | FLOPs (total) | FLOPs to target | compute ratio | "
             f"{round(level * 100)}% interval | wall-clock to target (s) | wall-clock ratio | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in m["methods"].items():
        seeds = ", ".join(str(r["seed"]) for r in runs[name])
        entry = {"ratio": e["ratio_value"], "interval": e.get("interval_flops"), "outcome": e.get("outcome"),
                 "ratio_bound": e.get("ratio_bound"), "n": e.get("interval_defined"),
                 "replicates": e.get("interval_replicates")}
        ratio, interval, seconds = (WITHHELD,) * 3 if withhold else \
            (ratio_cell(entry), interval_cell(entry), _fmt(e['ratio_seconds'], '.2f'))
        lines.append(f"| {name} | {seeds} | {e['steps']} | {e['final_metric']:.4f} | {e['total_flops']:.3e} | "
                     f"{_fmt(e['flops_to_target'], '.3e', 'not reached')} | {ratio} | {interval} | "
                     f"{_fmt(e['seconds_to_target'], '.1f', 'not reached')} | {seconds} | {e.get('note', '')} |")
    return lines + [""]


def _last(values: list):
    """The last logged value of a curve (a run evaluates its own loss only every eval_every steps)."""
    return next((v for v in reversed(values) if v is not None), None)


def plug_gaps(study: dict) -> dict[str, dict]:
    """For the MLM loss: each method's final validation loss through the model it trained through
    (its own log, seed mean over the seeds that logged one) beside the full model's with its
    embeddings plugged in. A mini-model method whose own loss is as low as the baseline's but whose
    plugged loss is not has learned embeddings that do not carry over to the full model: the
    premise of mini-model adaptation failing.

    The two losses are measured on different samples (a run's own evaluation has its own sequences
    and its seed's masks), so the baseline's gap, where both are the same model, is the offset that
    sampling alone makes; "beyond" is each method's gap minus it. {} without the baseline's."""
    means = {}
    for name, curve in study["curves"].items():
        pairs = [(_last(s.get("own_valid_loss") or []), s["metric"][-1]) for s in curve["per_seed"].values()]
        pairs = [(own, plugged) for own, plugged in pairs if own is not None]
        if pairs:
            means[name] = (*(sum(p[i] for p in pairs) / len(pairs) for i in (0, 1)), len(pairs))
    base = means.get(study["matched"]["baseline"])
    if base is None:
        return {}
    offset = base[1] - base[0]
    refit = study.get("bias_refit") or {}
    return {name: {"own": own, "plugged": plugged, "seeds": n, "gap": plugged - own,
                   "beyond": plugged - own - offset,
                   **({"refit": refit[name]["refit"], "output_side": refit[name]["output_side"]}
                      if name in refit else {})}
            for name, (own, plugged, n) in means.items()}


def plug_gap_section(study: dict) -> list[str]:
    """study.md's table of `plug_gaps`."""
    gaps = plug_gaps(study)
    if not gaps:
        return []
    rows = [f"| {name} | {g['seeds']} | {g['own']:.3f} | {g['plugged']:.3f} | {g['gap']:+.3f} | {g['beyond']:+.3f} | "
            f"{_fmt(g.get('refit'), '.3f')} | {_fmt(g.get('output_side'), '+.3f')} |"
            for name, g in gaps.items()]
    return ["Where each method's embeddings stand at the end (seed means): the validation loss of the model each "
            "run trained through, from its own log (its own validation sequences and masks), and the full model's "
            "with the embeddings plugged in (the table above). The baseline trained through the full model, so its "
            "gap is sampling alone; \"beyond\" is each method's gap beyond it: what is lost when embeddings "
            "learned through a mini-model go into the full one. The last two columns split that loss: the plugged "
            "loss again with only the output bias refit through the full model (loss_scoring.py), and the part the "
            "refit removed (the output side of the plug: a bias learned for another head); what remains is the "
            "input side.", "",
            "| method | seeds | own final loss | full model, plugged | gap | beyond the baseline's | plugged, bias "
            "refit | output side |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""]


def markdown(study: dict) -> str:
    level = study["level"]
    lines = ["# Compute-budget study: step-2 compute to reach the standard baseline", ""]
    check = study.get("transfer_check")
    if check:
        gain = check.get("baseline_gain") or {}
        verdict = "passed" if check["passed"] else f"failed: {check['why']}"
        enforced = "enforced: no ratio is printed when it fails" if check.get("required") else \
            "not enforced in this study (ratios below are printed either way)"
        lines += [f"Transfer check ({enforced}): {verdict}. Baseline gain over its initial embeddings: "
                  f"{_fmt(gain.get('point'), '+.4f')} (95% interval {_fmt((gain.get('interval') or [None])[0], '+.4f')} "
                  f"to {_fmt((gain.get('interval') or [None, None])[1], '+.4f')}, percentile).", ""]
    withhold = withheld(study)
    if withhold:  # the curves and crossings stay below; the ratios read off them are not shown
        lines.append(f"- study: no compute ratio: {check['why']}")
    else:
        for name, per_metric in study["summary"].items():
            for metric, entry in per_metric.items():
                lines.append(f"- {ratio_line(name, entry, metric, level)}")
        lines += [f"- {line}" for line in one_time_lines(study)]
    lines.append("")
    for metric, s in study["metrics"].items():
        lines += _metric_section(s, study["runs"], level, withhold)
        lines += [] if withhold else one_time_section(s, level)
        if s["metric"] == "mlm_loss":
            lines += plug_gap_section(s)
        refs = s.get("references") or {}
        if refs:
            lines += ["References: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in refs.items()) + ".", ""]
    lines += full_models_section(study.get("full_models"))
    if study.get("lr_pilot"):
        lines += lr_pilot_section(study["lr_pilot"]) + [""]
    if study.get("sweep"):
        lines += sweep_section(study["sweep"], study["sweep"].get("plot", "sweep.png"))
    lines += ["How: " + study["method"] + " The compute ratio is the baseline's FLOPs to reach the target divided by "
              "the method's (wall-clock likewise, a point estimate: seconds are measured and depend on the "
              "machine's load). Crossings are interpolated between checkpoints (error at most one checkpoint "
              "interval: `flops_bracket` in study.json). The MLM loss is the full model's, with each checkpoint's "
              "embeddings plugged in, on fixed validation sequences (loss_scoring.py); each run's own logged loss "
              "is in study.json (`own_valid_loss`) but not matched: a mini-model's loss is another model's.", ""]
    for plot in study["plots"]:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def summary_lines(result: dict) -> list[str]:
    """Notes and the MLM-loss lines first; the run ends with one line per method at matched
    transfer metric (ratio_line's form), after the "+focus" methods' with their one-time cost."""
    level, primary = result["level"], result["metric"]
    out = []
    for metric, s in result["metrics"].items():
        m = s["matched"]
        out.append(f"target {metric} {m['target']:.4f} = {m['fraction']:g} x {m['baseline']} final "
                   f"{m['baseline_final_metric']:.4f} (seed mean)")
        for name, e in m["methods"].items():
            if e.get("note"):
                out.append(f"  {name}: {e['note']}")
    if withheld(result):
        return out + [f"study: no compute ratio: {result['transfer_check']['why']}"]
    out += one_time_lines(result)
    for metric in [m for m in result["metrics"] if m != primary] + [primary]:
        for name, per_metric in result["summary"].items():
            out.append(ratio_line(name, per_metric[metric], metric, level))
    return out


# The k x vocabulary sweep (sweep.py).

SWEEP_METRICS = ("accuracy", "balanced_accuracy", "retrieval_top1", "mlm_loss")  # in its table's order

def _num(v, spec: str) -> str:
    if v is None:
        return "-"
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "inf"
    return format(v, spec)


def _level(result: dict) -> float:
    """The sweep's interval level (sweeps written before it was recorded were at 0.95)."""
    return result.get("level") or 0.95


def sweep_section(result: dict, image: str) -> list[str]:
    """The k x vocabulary table (sweep.md, and study.md's section when merged), `image` its plot."""
    metrics = [m for m in SWEEP_METRICS if any(m in p for p in result["points"])]
    head = ["k", "V (pieces)", "steps", "FLOP ratio / step", "wall-clock ratio / step", "head share of a mini step"]
    for m in metrics:
        head += [f"steps to target ({m})", f"compute ratio ({m})", f"{round(100 * _level(result)):d}% interval",
                 f"wall-clock ratio ({m})"]
    gap = any("plug_gap" in p for p in result["points"])
    head += ["plug gap beyond the baseline's"] if gap else []
    lines = ["## The k x vocabulary frontier (MiniPost at a fixed depth L)", "",
             f"Each point: MiniPost of the bottom k layers (+ one new top layer) of `{result['pretrained']}` against "
             f"the standard baseline at the same vocabulary, seeds {', '.join(map(str, result['seeds']))}. Ratios are "
             "full / mini; per-step ratios are measured in the runs (FLOPs: the analytic count of each step's real "
             "batch; wall-clock: training seconds); the compute ratio is at matched metric (the baseline's final), "
             "with its bootstrap interval. Head share: the MLM head's FLOPs in a mini step (analytic, expected "
             "masking); it does not shrink with k. Plug gap: the MLM loss the embeddings lose in the full model "
             "beyond what the baseline's lose (study.md's plug-gap table). A compute ratio < x: not reached within "
             "the arm's budget (a bound); no ratio (target met at the start): the baseline's start already meets its "
             "final metric, so no ratio is meaningful. n: the bootstrap replicates that define the interval.",
             "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in sorted(result["points"], key=lambda p: (p["vocab"], p["k"])):
        cells = [str(p["k"]), f"{p['vocab_size']}", str(p["steps"]), f"{p['step_flops_ratio']:.2f}",
                 f"{p['step_seconds_ratio']:.2f}", f"{100 * p['head_share']:.0f}%"]
        for m in metrics:
            e = p[m]
            cells += [_num(e["steps_to_target"], ".0f") if e["steps_to_target"] is not None else "not reached",
                      ratio_cell(e), interval_cell(e), _num(e["wallclock_ratio"], ".2f")]
        cells += [_num(p.get("plug_gap"), "+.2f")] if gap else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", f"![sweep]({image})", ""]


def plot_sweep(result: dict, path: Path) -> Path:
    """One figure: left, the ratios against k per vocabulary (the compute ratio at each matched
    metric with its interval, and the per-step FLOP and wall-clock ratios); right, the head's share
    of a mini step and the steps to each target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in SWEEP_METRICS if any(m in p for p in result["points"])]
    markers = dict(zip(metrics, "o^vs"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps_axis = right.twinx()
    for v in result["vocabs"]:
        pts = sorted((p for p in result["points"] if p["vocab"] == v), key=lambda p: p["k"])
        ks, size = [p["k"] for p in pts], pts[0]["vocab_size"] if pts else v
        color = None
        for metric in metrics:
            # A censored ratio (not reached, at 0 FLOPs) or none is not a point on the plot.
            ratio = [_finite(p[metric]["ratio"]) if outcome(p[metric]) == "ratio" else math.nan for p in pts]
            ends = [p[metric]["interval"] if _shows_interval(p[metric]) else [None, None] for p in pts]
            lo = [r - _finite(e[0], r) for r, e in zip(ratio, ends)]  # not reached (0): the bar goes to 0
            hi = [_finite(e[1], r) - r for r, e in zip(ratio, ends)]
            line = left.errorbar(ks, ratio, yerr=[lo, hi], marker=markers[metric], capsize=3, color=color,
                                 label=f"V={size}: compute ratio at matched {MATCHED_AT.get(metric, metric)}")
            color = line[0].get_color()
            steps_axis.plot(ks, [_finite(p[metric]["steps_to_target"]) for p in pts], ls="--",
                            marker=markers[metric], mfc="none", color=color,
                            label=f"V={size}: steps to the {MATCHED_AT.get(metric, metric)} target")
        left.plot(ks, [p["step_flops_ratio"] for p in pts], ls="--", color=color, label=f"V={size}: FLOP ratio / step")
        left.plot(ks, [p["step_seconds_ratio"] for p in pts], ls=":", color=color,
                  label=f"V={size}: wall-clock ratio / step")
        right.plot(ks, [100 * p["head_share"] for p in pts], marker="s", color=color, label=f"V={size}: head share")
    left.axhline(1.0, color="k", lw=0.8)
    left.set(xlabel="k (frozen bottom layers of the mini-model)", ylabel="full / mini",
             title=f"saving against k (error bars: {round(100 * _level(result)):d}% bootstrap)")
    right.set(xlabel="k", ylabel="MLM head's share of a mini step (%)", title="what does not shrink with k")
    steps_axis.set_ylabel("mini steps to the baseline's final metric (dashed)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(result["ks"])
    left.legend(fontsize=6)
    handles = right.get_legend_handles_labels()
    more = steps_axis.get_legend_handles_labels()
    right.legend(handles[0] + more[0], handles[1] + more[1], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(v, default: float = float("nan")) -> float:
    """Plot value of a ratio from study.json: "inf" and None (not reached) become `default`."""
    if v is None or v == "inf" or (isinstance(v, float) and not math.isfinite(v)):
        return default
    return float(v)


def sweep_lines(result: dict) -> list[str]:
    """One line per point: `sweep k=K V=N: compute ratio X.XX (95% interval LO-HI) at matched <metric>` (the
    study's --level)."""
    out = []
    for p in sorted(result["points"], key=lambda p: (p["vocab"], p["k"])):
        for metric in [m for m in SWEEP_METRICS if m in p]:
            out.append(f"sweep k={p['k']} V={p['vocab_size']}: {_ratio_phrase(p[metric], metric, _level(result))}; "
                       f"{p['step_flops_ratio']:.2f}x fewer FLOPs a step, head {100 * p['head_share']:.0f}% of it")
    return out


# One-time costs (one_time_cost.py) in study.md and the printed summary, in the study's own words.

def _without_cost(study: dict, name: str) -> dict:
    """The method's entry without the cost, in the form render's phrases read (compare.summarize's)."""
    e = study["matched"]["methods"][name]
    return {"ratio": e["ratio_value"], "interval": e.get("interval_flops"), "outcome": e.get("outcome"),
            "ratio_bound": e.get("ratio_bound"), "total_flops": e.get("total_flops"), "n": e.get("interval_defined"),
            "replicates": e.get("interval_replicates"), "interval_note": e.get("interval_note")}


def one_time_lines(result: dict) -> list[str]:
    """One line per costed method and metric: its ratio with its one-time cost, then without."""
    level, out = result["level"], []
    for metric, study in result["metrics"].items():
        for name, e in (study.get("one_time_cost") or {}).items():
            seconds = "" if e["cost_seconds"] is None else f", {e['cost_seconds']:.1f} s"
            costed = f"{name} with its one-time cost ({e['init']}: {e['cost_flops']:.3e} FLOPs{seconds})"
            out.append(f"{ratio_line(costed, e, metric, level)}; without it: {point_phrase(_without_cost(study, name))}")
    return out


def one_time_section(study: dict, level: float) -> list[str]:
    """study.md's table, under a metric's own table: each costed method without and with its cost."""
    entries = study.get("one_time_cost") or {}
    if not entries:
        return []
    rows = []
    for name, e in entries.items():
        without = _without_cost(study, name)
        seconds = "not recorded" if e["cost_seconds"] is None else f"{e['cost_seconds']:.1f}"
        with_seconds = "-" if e["ratio_seconds"] is None else f"{e['ratio_seconds']:.2f}"
        rows.append(f"| {name} | {e['init']} | {e['cost_flops']:.3e} | {seconds} | {ratio_cell(without)} | "
                    f"{interval_cell(without)} | {ratio_cell(e)} | {interval_cell(e)} | {with_seconds} | "
                    f"{', '.join(e['source'])} | {e['note']} |")
    pct = round(level * 100)
    return ["One-time cost: what a method spends once before its first step, which standard adaptation does not "
            "(FOCUS: training its fastText model on the target text and combining source rows; FLOPs estimated "
            "from fastText's CBOW updates, wall-clock measured). With it, the cost is added to every point of the "
            "method's curve and the ratio found again the same way.", "",
            f"| method | init | one-time FLOPs | one-time wall-clock (s) | compute ratio without it | {pct}% interval "
            f"| compute ratio with it | {pct}% interval | wall-clock ratio with it | cost from | note (with it) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""]
