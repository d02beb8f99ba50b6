"""The compute ratio averaged over target languages: one study per language (its own runs, seeds
and test set; compare.py), then per method and metric the geometric mean of the languages'
ratios, with a percentile interval from their bootstrap replicates.

Why the geometric mean: the ratios are multiplicative (2x in one language and 0.5x in another
average to 1x, not 1.25x), and it keeps the study's censored values meaningful: a language where
the method never reached the target (ratio 0) makes the average 0, one reached at initialisation
(inf) makes it inf, and both at once leave it undefined.

Why the interval is valid: each language's replicates resample its own runs and test examples,
independent of every other language's, so replicate b of every language together is one draw of
the product distribution; the geometric mean of each such draw is a replicate of the average.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ds_minimodel.analysis.study.bootstrap import percentile_interval
from ds_minimodel.errors import UserError


def _as_float(v) -> float:
    """A ratio as study.json writes it ("inf", None for undefined) as a float."""
    if v is None:
        return math.nan
    return math.inf if v == "inf" else float(v)


def geometric_mean(values) -> np.ndarray | float:
    """Over the last axis; 0 anywhere -> 0, inf anywhere -> inf, both -> nan (undefined)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(v).mean(axis=-1))


def average_studies(studies: dict[str, dict], level: float = 0.95) -> dict:
    """{language: its study.json} -> {"languages", "level", "methods": {method: {metric: {"ratio",
    "interval", "per_language": {language: {"ratio", "interval"}}}}}}: every method and metric that
    every study has."""
    if len(studies) < 2:
        raise UserError("an average over languages needs the studies of at least two languages")
    first = next(iter(studies.values()))
    problems = []
    baselines = {lang: s["metrics"][s["metric"]]["matched"]["baseline"] for lang, s in studies.items()}
    if len(set(baselines.values())) != 1:
        problems.append(f"the studies compare with different baselines ({baselines})")
    metrics = [m for m in first["metrics"] if all(m in s["metrics"] for s in studies.values())]
    methods = [n for n in first["summary"] if all(n in s["summary"] for s in studies.values())]
    if not methods:
        problems.append("no mini-model method is in every study")
    replicates = {}
    for lang, s in studies.items():
        for metric in metrics:
            for name in methods:
                r = s["metrics"][metric]["matched"]["methods"][name].get("bootstrap", {}).get("ratios")
                if r is None:
                    problems.append(f"{lang}'s study has no bootstrap replicates for {name} at {metric} "
                                    "(written before they were kept: run its study again, the scores are cached)")
                else:
                    replicates[lang, metric, name] = [_as_float(x) for x in r]
    if len({len(r) for r in replicates.values()}) > 1:
        problems.append("the studies drew different numbers of bootstrap replicates (--bootstrap)")
    if problems:
        raise UserError("; ".join(dict.fromkeys(problems)))
    out = {}
    for name in methods:
        out[name] = {}
        for metric in metrics:
            per_language = {}
            for lang, s in studies.items():
                m = s["metrics"][metric]["matched"]["methods"][name]
                per_language[lang] = {"ratio": _as_float(m["ratio_value"]),
                                      "interval": [_as_float(x) for x in m["interval_flops"]],
                                      "final_metric": m["final_metric"]}
            stacked = np.stack([replicates[lang, metric, name] for lang in studies], axis=1)  # [B, languages]
            lo, hi = percentile_interval(geometric_mean(stacked), level)
            out[name][metric] = {"ratio": float(geometric_mean([p["ratio"] for p in per_language.values()])),
                                 "interval": [lo, hi], "per_language": per_language}
    return {"languages": list(studies), "level": level, "baseline": next(iter(baselines.values())),
            "metric": first["metric"], "methods": out,
            "studies": {lang: s.get("_path", "") for lang, s in studies.items()}}


def markdown(result: dict) -> list[str]:
    from ds_minimodel.analysis.study.render import MATCHED_AT, format_ratio as fmt

    pct = round(result["level"] * 100)
    langs = result["languages"]
    lines = [f"# Compute-budget study averaged over {len(langs)} languages ({', '.join(langs)})", "",
             f"Per method: the geometric mean over languages of the compute ratio at matched metric (each language's "
             f"study: its own runs against the standard baseline `{result['baseline']}`), with a {pct}% percentile "
             "interval over the languages' bootstrap replicates together; then each language's own ratio and "
             "interval.", ""]
    for name, per_metric in result["methods"].items():
        for metric, e in per_metric.items():
            at = MATCHED_AT.get(metric, metric)
            lines += [f"## {name} at matched {at}: **{fmt(e['ratio'])}** ({pct}% interval "
                      f"{fmt(e['interval'][0])}-{fmt(e['interval'][1])})", "",
                      "| language | compute ratio | interval | method's final metric |", "| --- | --- | --- | --- |"]
            for lang, p in e["per_language"].items():
                lines.append(f"| {lang} | {fmt(p['ratio'])} | {fmt(p['interval'][0])}-{fmt(p['interval'][1])} | "
                             f"{p['final_metric']:.4f} |")
            lines.append("")
    return lines


def summary_lines(result: dict) -> list[str]:
    """The study's line per method, at every metric, the transfer metric last."""
    from ds_minimodel.analysis.study.render import ratio_line

    primary = result["metric"]
    out = []
    for name, per_metric in result["methods"].items():
        for metric in sorted(per_metric, key=lambda m: m == primary):
            e = per_metric[metric]
            line = ratio_line(name, {"ratio": e["ratio"], "interval": e["interval"]}, metric, result["level"])
            out.append(f"{line} (geometric mean over {len(result['languages'])} languages)")
    return out


def read_studies(dirs: list[str | Path]) -> dict[str, dict]:
    """{target language: study.json} of each study directory (the language its runs adapted to)."""
    import json

    studies = {}
    for d in dirs:
        path = Path(d) / "study.json"
        if not path.is_file():
            raise UserError(f"--average {d}: no study.json (run that language's study first)")
        s = json.loads(path.read_text(encoding="utf-8"))
        langs = {r["language"] for runs in s["runs"].values() for r in runs}
        if len(langs) != 1:
            raise UserError(f"--average {d}: its runs adapt to {sorted(langs)}, not one language")
        lang = langs.pop()
        if lang in studies:
            raise UserError(f"--average: two studies of language {lang!r} ({studies[lang]['_path']} and {d})")
        studies[lang] = {**s, "_path": str(d)}
    return studies
