"""The study's outputs people look at: the PNG curves, study.md and the summary lines."""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.analysis.study.matching import Point

METRIC_LABEL = {"accuracy": "target-language accuracy", "retrieval_top1": "En<->target retrieval top-1"}


def plot_curves(curves: dict[str, list[Point]], matched: dict, out_dir: Path, metric: str,
                references: dict | None = None) -> list[Path]:
    """metric_vs_flops.png and metric_vs_wallclock.png: each run's curve, the target line and
    each method's interpolated first crossing."""
    import matplotlib  # here, not at the top: only the study's writer needs it, headless

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for axis, fname, xlabel in (("flops", "metric_vs_flops.png", "cumulative step-2 FLOPs"),
                                ("seconds", "metric_vs_wallclock.png", "step-2 training wall-clock (s)")):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for name, pts in curves.items():
            line, = ax.plot([getattr(p, axis) for p in pts], [p.metric for p in pts], marker="o", ms=3, label=name)
            m = matched["methods"][name]
            x = m[f"{axis}_to_target"]
            if m["reached"] and x is not None:
                ax.plot([x], [matched["target"]], marker="x", ms=10, mew=2, color=line.get_color())
        ax.axhline(matched["target"], color="k", ls="--", lw=1,
                   label=f"target: {matched['fraction']:g} x {matched['baseline']} final")
        for label, value in (references or {}).items():
            ax.axhline(value, color="grey", ls=":", lw=1, label=label)
        ax.set(xlabel=xlabel, ylabel=METRIC_LABEL.get(metric, metric),
               title=f"{METRIC_LABEL.get(metric, metric)} against step-2 {'compute' if axis == 'flops' else 'time'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def markdown(study: dict) -> str:
    m = study["matched"]
    metric = study["metric"]
    base = m["baseline"]
    against = "own first crossing of the target" if m["baseline_at"] == "crossing" else "whole run"
    lines = ["# Compute-budget study: step-2 compute to reach the standard baseline", "",
             f"Metric: **{METRIC_LABEL.get(metric, metric)}** ({metric}). Target: {m['fraction']:g} x the final "
             f"{metric} of the baseline `{base}` ({m['baseline_final_metric']:.4f}) = **{m['target']:.4f}**. "
             f"Baseline compute compared against: its {against} ({_fmt(m['baseline_flops_to_target'], '.3e')} FLOPs, "
             f"{_fmt(m['baseline_seconds_to_target'], '.1f')} s).",
             "", "| method | run | steps | final | best | step-2 FLOPs (total) | FLOPs to target | "
             "compute saving vs baseline | wall-clock to target (s) | wall-clock saving | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in m["methods"].items():
        lines.append(f"| {name} | `{study['runs'][name]['dir']}` | {e['steps']} | {e['final_metric']:.4f} | "
                     f"{e['best_metric']:.4f} | {e['total_flops']:.3e} | "
                     f"{_fmt(e['flops_to_target'], '.3e', 'not reached')} | {_fmt(e['ratio_flops'], '.2f')}"
                     f"{'x' if e['ratio_flops'] is not None else ''} | "
                     f"{_fmt(e['seconds_to_target'], '.1f', 'not reached')} | {_fmt(e['ratio_seconds'], '.2f')}"
                     f"{'x' if e['ratio_seconds'] is not None else ''} | {e.get('note', '')} |")
    refs = study.get("references") or {}
    if refs:
        lines += ["", "References: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in refs.items()) + "."]
    lines += ["", "The saving is the baseline's FLOPs (wall-clock) to reach the target divided by the method's. "
              "Where a curve crosses the target between two checkpoints, the crossing is linearly interpolated "
              "between the last point below the target and the first at or above it (error at most one checkpoint "
              "interval: `flops_bracket` in study.json). FLOPs are analytic counts (deterministic); wall-clock "
              "is measured and depends on the machine's load.", "",
              "![metric vs FLOPs](metric_vs_flops.png)", "", "![metric vs wall-clock](metric_vs_wallclock.png)", ""]
    return "\n".join(lines)


def summary_lines(result: dict) -> list[str]:
    m = result["matched"]
    out = [f"target {result['metric']} {m['target']:.4f} = {m['fraction']:g} x {m['baseline']} final "
           f"{m['baseline_final_metric']:.4f}"]
    for name, e in m["methods"].items():
        if name == m["baseline"] and e["reached"]:
            out.append(f"  {name:<10} (baseline) reached it at {e['flops_to_target']:.3e} FLOPs "
                       f"({e['seconds_to_target']:.2f} s)")
        elif e["ratio_flops"] is not None:
            out.append(f"  {name:<10} reached it at {e['flops_to_target']:.3e} FLOPs ({e['seconds_to_target']:.2f} s): "
                       f"{e['ratio_flops']:.2f}x less compute, {_fmt(e['ratio_seconds'], '.2f')}x less time than "
                       "the baseline")
        else:
            out.append(f"  {name:<10} {e.get('note', 'no ratio')}")
    return out
