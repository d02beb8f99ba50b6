"""Score every checkpoint of every run (all seeds), match compute on the seed-averaged monotone
curves with bootstrap intervals, and write the study's outputs."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ds_minimodel.errors import UserError
from ds_minimodel.study.bootstrap import (
    INTERVAL_SUMMARY,
    INTERVAL_WHY,
    MethodScores,
    bootstrap_ratios,
    interval_description,
    stack_seeds,
)
from ds_minimodel.study.full_models import compare_full_models
from ds_minimodel.study.lr_pilot import read_lr_pilot
from ds_minimodel.study.loss_scoring import MLMLossScorer, refit_losses
from ds_minimodel.study.matching import Point, attach_bootstrap, matched_compute
from ds_minimodel.study.one_time_cost import one_time_costs, with_one_time_costs
from ds_minimodel.study.render import markdown, plot_curves
from ds_minimodel.study.row_scoring import RowPrecisionScorer, has_known_rows
from ds_minimodel.study.runs import StudyRun, open_runs, own_valid_loss
from ds_minimodel.study import transfer_check
from ds_minimodel.study.scoring import AgreementScorer, ByBody, RunScores, ScoreCache, collect_scores
from ds_minimodel.training.checkpoint import write_atomic


@dataclass
class StudyOptions:
    """How the runs are compared (the launcher's flags)."""
    baseline: str = "full"
    fraction: float = 1.0  # target = fraction x the baseline's final metric (the loss's target: its final loss)
    baseline_at: str = "crossing"
    include_init: bool = True
    fit: str = "isotonic"
    bootstrap: int = 1000  # replicates
    bootstrap_seed: int = 0
    level: float = 0.95
    loss: bool = True  # also the MLM loss through the full model (loss_scoring.py)
    loss_sequences: int = 128
    loss_mask_seed: int = 0
    # No ratio without transfer (transfer_check.py): the bodies' gate and the baseline's gain.
    require_transfer: bool = False


def json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def balanced_chance(weights) -> float:
    """The balanced accuracy of a classifier that answers one class whatever the input: 1 / the
    number of classes. Each unit's weight is 1 / the size of its class, so each class's weights
    sum to 1 and all of them to the number of classes (counting distinct weights would count
    distinct class sizes instead: 1 for a balanced test set)."""
    return 1.0 / round(float(np.sum(weights)))


STREAM_DERIVATION = "the first 8 bytes (big-endian) of sha256('<target language>:<--bootstrap-seed>')"


def bootstrap_stream(language: str, seed: int) -> int:
    """The study's own bootstrap stream (numpy's default_rng seed): each target language's study
    draws its replicates from its own stream, so the replicates of studies of different languages
    are independent, which the average over languages (languages.py) relies on. The same seed in
    every language gave every language the same resampling matrices."""
    return int.from_bytes(hashlib.sha256(f"{language}:{seed}".encode()).digest()[:8], "big")


def summarize(metrics: dict[str, dict], names) -> dict:
    """{method: {metric: what a summary line says}} for the methods `names`."""
    keys = {"ratio": "ratio_value", "interval": "interval_flops", "outcome": "outcome", "ratio_bound": "ratio_bound",
            "total_flops": "total_flops", "n": "interval_defined", "replicates": "interval_replicates",
            "interval_note": "interval_note"}
    return {name: {m: {**{k: r["matched"]["methods"][name].get(v) for k, v in keys.items()},
                       "note": r["matched"]["methods"][name].get("note", "")}
                   for m, r in metrics.items()}
            for name in names}


def _as_lists(runs: dict) -> dict[str, list]:
    return {name: list(dirs) if isinstance(dirs, (list, tuple)) else [dirs] for name, dirs in runs.items()}


def _score_method(runs: list[StudyRun], scorer, cache: ScoreCache, include_init: bool,
                  log: Callable[[str], None], weights=None) -> tuple[MethodScores, list[RunScores]]:
    """Every seed's scores; `weights` (per unit) reweight numerator and denominator alike (the
    class-balanced view of accuracy)."""
    scored = [collect_scores(r, scorer, cache, include_init, log) for r in runs]
    w = 1.0 if weights is None else weights
    scores = stack_seeds(runs[0].name, [s.seed for s in scored], [s.tags for s in scored], [s.steps for s in scored],
                         [s.flops for s in scored], [s.seconds for s in scored],
                         [[u.num * w for u in s.units] for s in scored], [[u.den * w for u in s.units] for s in scored],
                         getattr(scorer, "statistic", None))
    return scores, scored


def _curves_json(scores: MethodScores, scored: list[RunScores], matched_entry: dict, runs: list[StudyRun]) -> dict:
    own = [own_valid_loss(r) for r in runs]
    return {"seeds": scores.seeds, "tags": scores.tags, "steps": scores.steps.tolist(),
            "flops": scores.flops.mean(axis=0).tolist(), "seconds_mean": scores.seconds.mean(axis=0).tolist(),
            "mean": scores.per_seed.mean(axis=0).tolist(), "fit": matched_entry["fit"],
            "per_seed": {str(s.seed): {"metric": values.tolist(), "flops": s.flops, "seconds": s.seconds,
                                       "own_valid_loss": [o.get(st) for st in s.steps]}
                         for s, o, values in zip(scored, own, scores.per_seed)}}


def _study_metric(opened: dict[str, list[StudyRun]], scorer, out_dir: Path, opts: StudyOptions, fraction: float,
                  log: Callable[[str], None], balanced: bool = False, costs: dict | None = None) -> dict:
    """One metric: scores, the point estimate on the seed-averaged curves, the bootstrap.
    `balanced`: the accuracy scores (the same cache, no new forward pass) reweighted per class.
    `costs`: one_time_costs'; each such method is matched again with its cost (one_time_cost.py)."""
    cache = ScoreCache(out_dir / f"score_cache_{scorer.metric}.json", scorer.identity)
    metric = "balanced_accuracy" if balanced else scorer.metric
    language = opened[opts.baseline][0].info.language
    weights = scorer.balanced_weights(language) if balanced else None
    methods, scored = {}, {}
    for name, runs in opened.items():
        log(f"[{metric}] {name}: seeds {', '.join(str(r.seed) for r in runs)}, "
            f"{len(runs[0].tags)} checkpoints each")
        methods[name], scored[name] = _score_method(runs, scorer, cache, opts.include_init,
                                                    (lambda _: None) if balanced else log, weights)

    # Which units are correlated (a test verse's chapter): the bootstrap draws them together.
    clusters = scorer.clusters(language) if hasattr(scorer, "clusters") else None

    def match(scores: dict[str, MethodScores]) -> tuple[dict, dict]:
        """The point estimate on the seed-averaged curves, and the bootstrap (the costed curves
        go through this too)."""
        curves: dict[str, list[Point]] = {name: m.curve() for name, m in scores.items()}
        return (matched_compute(curves, opts.baseline, fraction, opts.baseline_at, scorer.better, opts.fit),
                bootstrap_ratios(scores, baseline=opts.baseline, fraction=fraction, baseline_at=opts.baseline_at,
                                 better=scorer.better, fit=opts.fit, replicates=opts.bootstrap,
                                 seed=bootstrap_stream(language, opts.bootstrap_seed), level=opts.level,
                                 clusters=clusters))

    matched, boot = match(methods)
    attach_bootstrap(matched, boot)
    references = {"chance": balanced_chance(weights)} if balanced else scorer.references(language)
    return {"metric": metric, "better": scorer.better, "scorer": scorer.identity,
            "references": references, "matched": matched,
            "curves": {name: _curves_json(methods[name], scored[name], matched["methods"][name], opened[name])
                       for name in methods},
            "bootstrap": {**{k: boot[k] for k in ("replicates", "seed", "level", "seed_resampling", "unit_resampling",
                                                  "clusters", "seeds", "interval_method")},
                          "description": interval_description(boot)},
            "units": next(iter(methods.values())).num.shape[2],
            "baseline_gain": boot["baseline_gain"],
            "one_time_cost": with_one_time_costs(methods, costs or {}, match)}


def _body_dirs(opened: dict, base) -> list[str]:
    """Each run's own full model: the baseline's first, then any other a run adapted through or
    carved its MiniJoint mini-model from (a MiniPost pack fits the model its MiniPost was made
    from, which the paper's comparison shares with the baseline)."""
    dirs = [base.config.adapt.model_dir]
    for runs in opened.values():
        for r in runs:
            if r.method in ("full", "minijoint") and r.config.adapt.model_dir not in dirs:
                dirs.append(r.config.adapt.model_dir)
    return dirs


def _row_scorer(opened: dict, base):
    """Row precision@1 against each run's own source table (row_scoring.py), for a cipher target."""
    scorers = [RowPrecisionScorer(d, base.config.data.path) for d in _body_dirs(opened, base)]
    return scorers[0] if len(scorers) == 1 else ByBody(scorers)


def _loss_scorer(opened: dict, base, opts: StudyOptions):
    """The MLM loss through each run's own full model (`_body_dirs`). One model: its scorer;
    several: `ByBody` routes each pack to its own."""
    dirs = _body_dirs(opened, base)
    data = base.config.data
    scorers = [MLMLossScorer.for_run(base, opts.loss_sequences, opts.loss_mask_seed)] + \
        [MLMLossScorer(d, data.path, data.seq_len, data.mask_prob, opts.loss_sequences, data.eval_batch_size,
                       opts.loss_mask_seed) for d in dirs[1:]]
    return scorers[0] if len(scorers) == 1 else ByBody(scorers)


def compare_runs(runs: dict[str, list[str | Path] | str | Path], scorer, out_dir: str | Path,
                 opts: StudyOptions | None = None, log: Callable[[str], None] = print) -> dict:
    """Score every checkpoint of every run (`runs`: {method: its run dirs, one per seed}), compute
    the matched-compute ratios with their intervals for the transfer metric and (opts.loss) the
    MLM loss, and write study.json, study.md and the plots into out_dir."""
    opts = opts or StudyOptions()
    opened = open_runs(_as_lists(runs), opts.baseline)
    # Validate the numbers before the (slow) scoring.
    matched_compute({n: [Point(0, 0, 0.0, 0.0)] for n in opened}, opts.baseline, opts.fraction, opts.baseline_at,
                    scorer.better, opts.fit)
    loss_scorer = None
    if opts.loss:
        base = opened[opts.baseline][0]
        if base.config.adapt.through != "full":
            raise UserError(f"the MLM loss is scored through the baseline's full model, but the baseline "
                            f"{opts.baseline!r} ({base.dir}) trained through a mini-model; pass --no-loss")
        loss_scorer = _loss_scorer(opened, base, opts)
    costs = one_time_costs(opened, log)  # FOCUS's fastText model, which standard adaptation does not train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {scorer.metric: _study_metric(opened, scorer, out_dir, opts, opts.fraction, log, costs=costs)}
    # Agreement with English (kappa) is read from the classifier's answers, which give raw agreement
    # and accuracy too.
    accuracy = scorer.accuracy if scorer.metric == "agreement" else scorer if scorer.metric == "accuracy" else None
    if accuracy is not None:
        if accuracy is not scorer:
            raw = AgreementScorer(accuracy, kappa=False)
            metrics[raw.metric] = _study_metric(opened, raw, out_dir, opts, opts.fraction, log, costs=costs)
            metrics["accuracy"] = _study_metric(opened, accuracy, out_dir, opts, opts.fraction, log, costs=costs)
        metrics["balanced_accuracy"] = _study_metric(opened, accuracy, out_dir, opts, opts.fraction, log,
                                                     balanced=True, costs=costs)
    if loss_scorer is not None:
        metrics[loss_scorer.metric] = _study_metric(opened, loss_scorer, out_dir, opts, 1.0, log,
                                                         costs=costs)
        # The output side of the plug gap: each run's final table with the output bias refit.
        metrics[loss_scorer.metric]["bias_refit"] = refit_losses(opened, loss_scorer, out_dir, log)
    base = opened[opts.baseline][0]
    if has_known_rows(base.config.data.path):  # a cipher language: how many rows found their known row
        rows = _row_scorer(opened, base)
        metrics[rows.metric] = _study_metric(opened, rows, out_dir, opts, opts.fraction, log, costs=costs)
    # Several classifiers (the paper's comparison): what the mid head costs the full model.
    full_models = compare_full_models(accuracy.scorers) if isinstance(accuracy, ByBody) else None
    plots = plot_curves(metrics, out_dir)
    summary = summarize(metrics, [name for name in opened if name != opts.baseline])
    bodies = [r.config.adapt.model_dir for rs in opened.values() for r in rs if r.method in ("full", "minijoint")]
    transfer = transfer_check.check(transfer_check.body_gates(bodies), metrics[scorer.metric].get("baseline_gain"),
                                    scorer.metric, opts.include_init)
    language = opened[opts.baseline][0].info.language
    pilot = read_lr_pilot(out_dir)  # each method's learning rate, when the study chose it (lr_pilot.py)
    result = {
        "metric": scorer.metric, "level": opts.level, "include_init_point": opts.include_init,
        "bootstrap_stream": {"stream": bootstrap_stream(language, opts.bootstrap_seed), "language": language,
                             "bootstrap_seed": opts.bootstrap_seed, "derivation": STREAM_DERIVATION},
        "runs": {n: [{"dir": str(r.dir), "method": r.method, "language": r.info.language, "seed": r.seed,
                      "steps": r.config.train.steps, "model_dir": r.config.adapt.model_dir, "checkpoints": r.tags}
                     for r in rs] for n, rs in opened.items()},
        "summary": summary,
        # Checked always, enforced with opts.require_transfer (render.summary_lines).
        "transfer_check": {**transfer, "required": opts.require_transfer},
        "metrics": metrics,
        "full_models": full_models,
        "one_time_costs": costs,
        **({"lr_pilot": pilot} if pilot else {}),
        "method": "each method's curve is its metric at each checkpoint averaged over its seeds; the crossing of "
                  "the target (fraction x the baseline's averaged final metric; for the MLM loss its averaged "
                  "final loss) is found on the curve's monotone (isotonic) fit, linearly interpolated between "
                  "checkpoints; the ratio is the baseline's FLOPs to the target over the method's; "
                  + INTERVAL_SUMMARY + " Replicates are drawn from the study's own stream (bootstrap_stream); an "
                  "interval counts the replicates that define a "
                  "ratio (n = k of N), and none is given under 90% of them. A method that never reaches the target "
                  "has a bound (its ratio is below the baseline's FLOPs over its whole budget), one whose own start "
                  "meets it no finite ratio, and none has a ratio when the baseline's start already meets it. "
                  + INTERVAL_WHY,
        "plots": [p.name for p in plots],
    }
    result = json_safe(result)
    write_atomic(out_dir / "study.json", json.dumps(result, indent=1))
    write_atomic(out_dir / "study.md", markdown(result))
    return result
