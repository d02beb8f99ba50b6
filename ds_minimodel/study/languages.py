"""The compute ratio averaged over target languages: one study per language (its own runs, seeds
and test set; compare.py), then per method and metric the geometric mean of the languages'
ratios, with a percentile interval from their bootstrap replicates.

Why the geometric mean: the ratios are multiplicative (2x in one language and 0.5x in another
average to 1x, not 1.25x).

Censored languages. A language where the method never reached the target has a bound, not a
ratio (below the baseline's FLOPs over the method's whole budget): the mean is then a bound too,
the geometric mean with each such language at its bound, and says so. A language where the
method reached the target at 0 FLOPs (no finite ratio) leaves the mean unbounded: no value. A
language with no ratio at all (the target met at the start, or a baseline that never reached it),
or both kinds of censoring at once, leaves it undefined: no value, and the reason.

The interval. In replicate b, the geometric mean of every language's replicate b, with the
censored values ordered at their ends (not reached 0, at 0 FLOPs inf); a replicate where one
language is 0 and another inf, or any is undefined, is undefined. Undefined replicates are
counted, never dropped silently: the interval is over the n of N that are defined, says so, and
is not given under 90% of them, nor where the estimate itself is undefined.

Why replicate b of every language together is one draw of the product distribution: each study
resampled its own runs and test examples from its own bootstrap stream, derived from its target
language and its --bootstrap-seed (compare.bootstrap_stream, recorded in study.json), so the
languages' replicates are independent. Studies written before the streams were derived per
language all drew from --bootstrap-seed 0 (the same resampling matrices wherever seeds and test
sets have the same sizes): they record no stream and are refused, as are studies whose streams
coincide and studies whose interval level or target (fraction, baseline_at, fit, init point)
differ, which would average different quantities.

No ratio without transfer (transfer_check.py). A language whose study enforced the transfer check
(--require-transfer) and failed it has no ratio to average: it is left out of the mean, named with
the check's reason ("withheld"), and the mean is over the languages that passed (a smaller set, and
a selected one: where the baseline transferred). With fewer than two left there is no average, and
one line says why.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ds_minimodel.config import read_json_object
from ds_minimodel.errors import UserError
from ds_minimodel.study.bootstrap import percentile_interval
from ds_minimodel.study.matching import MIN_DEFINED, interval_withheld


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


def _named(studies: dict, langs) -> str:
    return ", ".join(f"{lang} ({studies[lang].get('_path') or 'study.json'})" for lang in langs)


def _differ(studies: dict, what: str, values: dict) -> str | None:
    if len({repr(v) for v in values.values()}) == 1:
        return None
    return f"the studies differ in {what}: " + ", ".join(f"{lang} {v}" for lang, v in values.items())


def comparability_problems(studies: dict[str, dict], metrics: list[str]) -> list[str]:
    """Why these studies' ratios and replicates cannot be averaged (the module docstring)."""
    problems = []
    streams = {lang: (s.get("bootstrap_stream") or {}).get("stream") for lang, s in studies.items()}
    missing = [lang for lang, v in streams.items() if v is None]
    if missing:
        problems.append(f"{_named(studies, missing)} record no bootstrap stream (written when every language drew "
                        "from the same --bootstrap-seed: run them again, the scores are cached)")
    by_stream: dict[int, list[str]] = {}
    for lang, v in streams.items():
        if v is not None:
            by_stream.setdefault(v, []).append(lang)
    for langs in by_stream.values():
        if len(langs) > 1:
            problems.append(f"{_named(studies, langs)} drew their replicates from one bootstrap stream: they are "
                            "not independent (give each its own --bootstrap-seed)")
    checks = [("level", {lang: s.get("level") for lang, s in studies.items()}),
              ("include_init", {lang: s.get("include_init_point") for lang, s in studies.items()})]
    for metric in metrics:
        for key in ("fraction", "baseline_at", "fit"):
            checks.append((f"{key} at {metric}",
                           {lang: s["metrics"][metric]["matched"].get(key) for lang, s in studies.items()}))
    problems += [p for p in (_differ(studies, what, values) for what, values in checks) if p]
    return problems


def mean_over_languages(per_language: dict[str, dict]) -> dict:
    """The estimate of the mean from each language's outcome (the module docstring): "ratio", a
    bound ("not_reached", with ratio_bound), "at_zero_flops" (unbounded) or "undefined"."""
    by = {}
    for lang, p in per_language.items():
        by.setdefault(p["outcome"], []).append(lang)
    none = [lang for o, langs in by.items() if o not in ("ratio", "not_reached", "at_zero_flops") for lang in langs]
    if none:
        reasons = sorted({per_language[lang]["outcome"] for lang in none})
        from ds_minimodel.study.render import NO_RATIO

        why = "; ".join(f"{NO_RATIO.get(o, o)} in {', '.join(l for l in none if per_language[l]['outcome'] == o)}"
                        for o in reasons)
        return {"outcome": "undefined", "ratio": math.nan, "ratio_bound": None, "why": why}
    low, high = by.get("not_reached", []), by.get("at_zero_flops", [])
    if low and high:
        return {"outcome": "undefined", "ratio": math.nan, "ratio_bound": None,
                "why": f"not reached in {', '.join(low)}, reached at 0 FLOPs in {', '.join(high)}"}
    if high:
        return {"outcome": "at_zero_flops", "ratio": math.inf, "ratio_bound": None,
                "why": f"reached at 0 FLOPs in {', '.join(high)}"}
    if low:
        bounds = [per_language[lang]["ratio_bound"] if lang in low else per_language[lang]["ratio"]
                  for lang in per_language]
        bound = None if any(b is None for b in bounds) else float(geometric_mean(bounds))
        return {"outcome": "not_reached", "ratio": 0.0, "ratio_bound": bound,
                "why": f"not reached in {', '.join(low)}"}
    return {"outcome": "ratio", "ratio": float(geometric_mean([p["ratio"] for p in per_language.values()])),
            "ratio_bound": None}


def average_studies(studies: dict[str, dict], level: float | None = None) -> dict:
    """{language: its study.json} -> {"languages", "level", "methods": {method: {metric: {"ratio",
    "outcome", "ratio_bound", "why", "interval", "n", "replicates", "per_language": {language: ...}}}}}:
    every method and metric that every study has, at the studies' own level (`level` must agree)."""
    if len(studies) < 2:
        raise UserError("an average over languages needs the studies of at least two languages")
    from ds_minimodel.study.render import withheld as ratios_withheld  # render imports this module

    withheld = {lang: s["transfer_check"]["why"] for lang, s in studies.items() if ratios_withheld(s)}
    kept = {lang: s for lang, s in studies.items() if lang not in withheld}
    overview = {lang: _overview(s) for lang, s in studies.items()}
    if len(kept) < 2:
        first = next(iter(studies.values()))
        passed = f"only {', '.join(kept)} passed it" if kept else "none passed it"
        return {"languages": list(studies), "averaged": [], "withheld": withheld, "methods": {},
                "level": first.get("level") or level or 0.95, "metric": first["metric"],
                "baseline": first["metrics"][first["metric"]]["matched"]["baseline"],
                "no_average": f"the transfer check failed in {', '.join(withheld)} ({passed}; an average needs two)",
                "overview": overview, "studies": {lang: s.get("_path", "") for lang, s in studies.items()}}
    result = _average(kept, level)
    return {**result, "languages": list(studies), "averaged": list(kept), "withheld": withheld, "overview": overview,
            "studies": {lang: s.get("_path", "") for lang, s in studies.items()}}


# The overview's columns: the transfer metric (the study's own, first), then these where measured.
OVERVIEW_METRICS = ("row_precision", "mlm_loss")


def _overview(study: dict) -> dict:
    """One language's study in a few numbers: its transfer check, the baseline's gain over its
    random-embedding control on the transfer metric, and each method's final value of the
    transfer metric, row precision@1 (a cipher language) and the plugged MLM loss."""
    primary = study["metric"]
    check = study.get("transfer_check") or {}
    final = {metric: {name: m.get("final_metric") for name, m in study["metrics"][metric]["matched"]["methods"].items()}
             for metric in (primary, *OVERVIEW_METRICS) if metric in study["metrics"]}
    return {"transfer_check": ("passed" if check.get("passed") else "failed") if check else "not checked",
            "baseline_gain": study["metrics"][primary].get("baseline_gain"), "final": final}


def _average(studies: dict[str, dict], level: float | None) -> dict:
    first = next(iter(studies.values()))
    problems = []
    baselines = {lang: s["metrics"][s["metric"]]["matched"]["baseline"] for lang, s in studies.items()}
    if len(set(baselines.values())) != 1:
        problems.append(f"the studies compare with different baselines ({baselines})")
    metrics = [m for m in first["metrics"] if all(m in s["metrics"] for s in studies.values())]
    methods = [n for n in first["summary"] if all(n in s["summary"] for s in studies.values())]
    if not methods:
        problems.append("no mini-model method is in every study")
    problems += comparability_problems(studies, metrics)
    study_level = first.get("level")
    if level is not None and study_level is not None and level != study_level:
        problems.append(f"the studies' intervals are at {study_level}, not {level}")
    level = study_level if study_level is not None else (level or 0.95)
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
        raise UserError("--average: " + "; ".join(dict.fromkeys(problems)))
    out = {}
    for name in methods:
        out[name] = {}
        for metric in metrics:
            per_language = {}
            for lang, s in studies.items():
                m = s["metrics"][metric]["matched"]["methods"][name]
                ratio = _as_float(m["ratio_value"])
                per_language[lang] = {"ratio": ratio, "outcome": m.get("outcome") or _outcome_of(ratio),
                                      "ratio_bound": m.get("ratio_bound"), "interval": m.get("interval_flops"),
                                      "n": m.get("interval_defined"), "replicates": m.get("interval_replicates"),
                                      "final_metric": m["final_metric"]}
            stacked = np.stack([replicates[lang, metric, name] for lang in studies], axis=1)  # [B, languages]
            means = geometric_mean(stacked)
            defined, total = int((~np.isnan(means)).sum()), len(means)
            entry = {**mean_over_languages(per_language), "n": defined, "replicates": total, "interval": None}
            if interval_withheld(defined, total):
                entry["interval_note"] = (f"only n = {defined} of {total} replicates define a ratio "
                                          f"(under {MIN_DEFINED:.0%})")
            elif entry["outcome"] != "undefined":
                entry["interval"] = list(percentile_interval(means, level))
            out[name][metric] = {**entry, "per_language": per_language}
    return {"languages": list(studies), "level": level, "baseline": next(iter(baselines.values())),
            "metric": first["metric"], "methods": out,
            "studies": {lang: s.get("_path", "") for lang, s in studies.items()}}


def _outcome_of(ratio: float) -> str:
    return "undefined" if math.isnan(ratio) else "at_zero_flops" if math.isinf(ratio) else \
        "not_reached" if ratio == 0 else "ratio"


def markdown(result: dict) -> list[str]:
    from ds_minimodel.study.render import MATCHED_AT, interval_cell, ratio_cell

    pct = round(result["level"] * 100)
    langs = result.get("averaged", result["languages"])
    withheld = result.get("withheld") or {}
    if result.get("no_average"):
        return [f"# Compute-budget study over {len(result['languages'])} languages: no average", "",
                f"No ratio averaged over languages: {result['no_average']}.", "", *_withheld_lines(withheld),
                *overview_lines(result)]
    lines = [f"# Compute-budget study averaged over {len(langs)} languages ({', '.join(langs)})", "",
             *_withheld_lines(withheld),
             f"Per method: the geometric mean over languages of the compute ratio at matched metric (each language's "
             f"study: its own runs against the standard baseline `{result['baseline']}`), with a {pct}% percentile "
             "interval over the languages' bootstrap replicates together (n: the replicates whose mean is defined; "
             f"none under {MIN_DEFINED:.0%}); then each language's own ratio and interval. A language where the "
             "method never reached the target has a bound (<), and makes the mean a bound; one where it reached it "
             "at 0 FLOPs leaves the mean without a finite value; one with no ratio leaves it undefined.", ""]
    lines += overview_lines(result)
    for name, per_metric in result["methods"].items():
        for metric, e in per_metric.items():
            at = MATCHED_AT.get(metric, metric)
            lines += [f"## {name} at matched {at}: **{ratio_cell(e)}** ({pct}% interval {interval_cell(e)})", "",
                      "| language | compute ratio | interval | method's final metric |", "| --- | --- | --- | --- |"]
            for lang, p in e["per_language"].items():
                lines.append(f"| {lang} | {ratio_cell(p)} | {interval_cell(p)} | {p['final_metric']:.4f} |")
            lines.append("")
    return lines


def overview_lines(result: dict) -> list[str]:
    """study.md's table of every language's own numbers (averaged or not): the transfer check, the
    baseline's gain with its interval, and each method's final values."""
    overview = result.get("overview") or {}
    if not overview:
        return []
    primary = result["metric"]
    metrics = [m for m in (primary, *OVERVIEW_METRICS) if any(m in o["final"] for o in overview.values())]
    names = {"row_precision": "row precision@1", "mlm_loss": "plugged MLM loss"}
    lines = ["## Every language's own numbers", "",
             f"Each language's study: its transfer check, the standard baseline's gain in {primary} from its random "
             "initial embeddings (the control) to its end with the 95% interval, and each method's final values "
             "(seed means).", "",
             "| language | transfer check | baseline gain | method | " + " | ".join(names.get(m, m) for m in metrics) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for lang, o in overview.items():
        gain = o.get("baseline_gain")
        cell = "" if not gain else (f"{gain['first']:.3f} -> {gain['final']:.3f}: {gain['point']:+.3f} "
                                    f"({_signed(gain['interval'][0])} to {_signed(gain['interval'][1])})")
        methods = list(o["final"].get(primary, {}))
        for i, name in enumerate(methods):
            values = [o["final"].get(m, {}).get(name) for m in metrics]
            lines.append(f"| {lang if i == 0 else ''} | {o['transfer_check'] if i == 0 else ''} | "
                         f"{cell if i == 0 else ''} | {name} | "
                         + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return lines + [""]


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _withheld_lines(withheld: dict[str, str]) -> list[str]:
    if not withheld:
        return []
    return ["Left out of the mean, their ratios withheld (no ratio without transfer):", "",
            *(f"- {lang}: {why}" for lang, why in withheld.items()), ""]


def summary_lines(result: dict) -> list[str]:
    """The study's line per method, at every metric, the transfer metric last; first, the languages
    left out by the transfer check, or the one line saying there is no average."""
    from ds_minimodel.study.render import _ratio_phrase

    if result.get("no_average"):
        return [f"study: no compute ratio averaged over languages: {result['no_average']}"]
    primary = result["metric"]
    out = [f"study: {lang} left out of the average (no ratio without transfer): {why}"
           for lang, why in (result.get("withheld") or {}).items()]
    for name, per_metric in result["methods"].items():
        for metric in sorted(per_metric, key=lambda m: m == primary):
            phrase = _ratio_phrase(per_metric[metric], metric, result["level"],
                                   f" (geometric mean over {len(result.get('averaged', result['languages']))} "
                                   "languages)")
            out.append(f"study {name}: {phrase}")
    return out


def read_studies(dirs: list[str | Path]) -> dict[str, dict]:
    """{target language: study.json} of each study directory (the language its runs adapted to)."""

    studies = {}
    for d in dirs:
        path = Path(d) / "study.json"
        if not path.is_file():
            raise UserError(f"--average {d}: no study.json (run that language's study first)")
        s = read_json_object(path)
        langs = {r["language"] for runs in s["runs"].values() for r in runs}
        if len(langs) != 1:
            raise UserError(f"--average {d}: its runs adapt to {sorted(langs)}, not one language")
        lang = langs.pop()
        if lang in studies:
            raise UserError(f"--average: two studies of language {lang!r} ({studies[lang]['_path']} and {d})")
        studies[lang] = {**s, "_path": str(d)}
    return studies
