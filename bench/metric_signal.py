"""Which transfer metric tells adapted embeddings from their random start more surely per CPU
minute: six-way verse genre or Old-vs-New Testament (issue 25, item 4).

    python bench/metric_signal.py --genre runs/pipeline-body/finetune/final \
        --testament runs/pipeline-body/finetune-testament/final \
        --runs runs/study-cipher-quick/adapt-full-s0 runs/study-cipher-quick/adapt-full-s1 \
        --out runs/metric_signal.json

Tables: each study run (--runs) gives its initial embeddings ("before", rebuilt as the study
rebuilds them: study/runs.init_tensors) and its last complete checkpoint ("after"); --before and
--after give language packs paired by position instead (or as well). Every table is plugged into
each classifier and the held-out test verses of the tables' language are scored:

- genre (`--genre`, a bible-genre classifier): Cohen's kappa of the answers against the
  classifier's answers on the parallel English verses (the study's "agreement"), and accuracy;
- testament (`--testament`, a bible-testament classifier): ROC AUC of P(New Testament) against
  the gold labels (tasks/metrics.roc_auc), and kappa against the English answers.

Per metric: its value before and after (per pair), the gain (the mean over pairs of after -
before), the gain's standard error by a chapter bootstrap (the held-out chapters drawn with
replacement, each bringing all its verses, `--replicates` times from numpy's default_rng(--seed);
the same draws for every metric and table, so before and after stay paired), z = gain / SE, and
z^2 per CPU minute of scoring (time.process_time around the forward passes of the before and after
tables, which is what a study pays per checkpoint; the English answers and the tokenisation,
paid once per classifier and language, are reported as setup). z grows as the square root of
the test verses scored, so z^2 is what grows linearly with the work. Each classifier's
fine-tuning time (train_seconds, wall-clock, of its run's metrics.jsonl) is reported beside.

Prints one table row per task and metric and one comparison line (each task's headline metric:
genre kappa, testament AUC); writes the whole result as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ds_minimodel.errors import InvalidValueError, UserError

TASKS = {"genre": "verse-genre", "testament": "verse-testament"}  # --flag: the classifier's task name
HEADLINE = {"genre": "agreement", "testament": "auc"}


# ---- the chapter bootstrap (pure numpy) -------------------------------------------------------

def chapter_draws(chapters: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, chapters] chapter indices drawn with replacement (numpy's default_rng(seed))."""
    if chapters < 1 or replicates < 2:
        raise InvalidValueError(f"a bootstrap needs at least 1 chapter and 2 replicates, got {chapters} and "
                                f"{replicates}")
    return np.random.default_rng(seed).integers(0, chapters, size=(replicates, chapters))


def chapter_order(unit_chapters: Sequence) -> list:
    """The distinct chapters of the units, in order of first appearance (the draws' indices)."""
    return list(dict.fromkeys(unit_chapters))


def replicate_weights(unit_chapters: Sequence, draws: np.ndarray) -> np.ndarray:
    """[R, N]: how often replicate r holds unit n, i.e. how often it drew the unit's chapter."""
    index = {c: i for i, c in enumerate(chapter_order(unit_chapters))}
    if draws.max(initial=0) >= len(index):
        raise InvalidValueError(f"chapter draws reach index {draws.max()}, the units have {len(index)} chapters")
    counts = np.zeros((draws.shape[0], len(index)))
    np.add.at(counts, (np.repeat(np.arange(draws.shape[0]), draws.shape[1]), draws.ravel()), 1.0)
    return counts[:, [index[c] for c in unit_chapters]]


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of each weighting of the units ([R, N] -> [R]): a unit of weight w counts as w
    copies of it, ties count one half (tasks/metrics.roc_auc on the expanded units). NaN where a
    weighting has no positive or no negative unit."""
    order = np.argsort(scores, kind="stable")
    s, y, w = np.asarray(scores)[order], np.asarray(labels)[order], np.asarray(weights, dtype=np.float64)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # runs of tied scores
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each run
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (pos * (below + neg / 2)).sum(axis=1) / pairs, np.nan)


def weighted_kappa(answers: np.ndarray, reference: np.ndarray, classes: int, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of `answers` against `reference` under each weighting ([R, N] -> [R]), from
    the study's per-unit counts (study/scoring.kappa_units, kappa_statistic)."""
    from ds_minimodel.study.scoring import kappa_statistic, kappa_units

    return kappa_statistic(weights @ kappa_units(answers, reference, classes), weights.sum(axis=1))


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return weights @ np.asarray(values, dtype=np.float64) / weights.sum(axis=1)


def gain_signal(before: Sequence[float], after: Sequence[float], before_reps: np.ndarray,
                after_reps: np.ndarray) -> dict:
    """The gain (mean over pairs of after - before), its bootstrap standard error (the sample
    standard deviation of the replicates' gains, replicates where the metric is undefined left
    out) and z = gain / SE. `*_reps`: [pairs, R] each table's metric per replicate."""
    gain = float(np.mean(np.asarray(after) - np.asarray(before)))
    reps = (np.asarray(after_reps) - np.asarray(before_reps)).mean(axis=0)
    reps = reps[np.isfinite(reps)]
    se = float(reps.std(ddof=1)) if len(reps) > 1 else math.nan
    z = gain / se if se > 0 else (math.copysign(math.inf, gain) if gain and se == 0 else math.nan)
    return {"before": [float(v) for v in before], "after": [float(v) for v in after], "gain": gain, "se": se,
            "z": z, "replicates_used": int(len(reps))}


# ---- tables and scoring -----------------------------------------------------------------------

@dataclass
class Table:
    """One embedding table as the study scores it: a pack, or a run's initial or checkpoint table."""
    name: str
    info: object  # artefacts.langpack.PackInfo
    tensors: dict
    tokenizer_path: str


def tables_from_runs(run_dirs: Sequence[str]) -> list[tuple[Table, Table]]:
    """(initial embeddings, last complete checkpoint) of each study adaptation run."""
    from ds_minimodel.study.runs import checkpoint_tensors, init_tensors, open_run

    pairs = []
    for d in run_dirs:
        run = open_run(Path(d).name, d)
        last = run.tags[-1]
        pairs.append((Table(f"{d}:init", run.info, init_tensors(run), run.tokenizer_path),
                      Table(f"{d}:{last}", run.info, checkpoint_tensors(run, last), run.tokenizer_path)))
    return pairs


def tables_from_packs(before: Sequence[str], after: Sequence[str]) -> list[tuple[Table, Table]]:
    from ds_minimodel.artefacts.langpack import load_pack

    if len(before) != len(after):
        raise UserError(f"--before gives {len(before)} pack(s), --after {len(after)}: they pair by position")

    def table(path):
        info, tensors, _ = load_pack(path)
        return Table(str(path), info, tensors, str(Path(path) / "tokenizer.model"))

    return [(table(b), table(a)) for b, a in zip(before, after)]


def finetune_record(model_dir: str | Path) -> dict | None:
    """{train_seconds, flops, step} of the classifier's fine-tuning run (the last train record of
    metrics.jsonl beside its final/ directory); None where there is none."""
    from ds_minimodel.training.metrics import read_metrics

    rows = [r for r in read_metrics(Path(model_dir).parent, "train") if "train_seconds" in r]
    if not rows:
        return None
    last = rows[-1]
    return {"train_seconds": float(last["train_seconds"]), "flops": last.get("flops"), "step": last.get("step")}


def score_task(kind: str, model_dir: str, pairs: list[tuple[Table, Table]], *, eval_examples: int | None,
               draws_for: Callable[[int], np.ndarray], batch_size: int = 32, sample_seed: int = 0) -> dict:
    """Every metric of task `kind` ("genre" | "testament") on every table pair, with its signal."""
    from ds_minimodel.steps.finetune.classification import predictions, probabilities
    from ds_minimodel.study.scoring import AccuracyScorer
    from ds_minimodel.tasks.metrics import cohen_kappa, roc_auc

    t0 = time.process_time()
    scorer = AccuracyScorer(model_dir, eval_examples=eval_examples, seed=sample_seed, batch_size=batch_size)
    if scorer.task.name != TASKS[kind]:
        raise UserError(f"--{kind} {model_dir} is a {scorer.task.name} classifier, not {TASKS[kind]} "
                        f"(fine-tune it with finetune.task=bible-{kind})")
    language = pairs[0][0].info.language
    labels, english = scorer.labels(language), scorer.source_answers(language)
    clusters = scorer.clusters(language)
    if clusters is None:
        raise UserError(f"the {kind} test set has examples that are not Bible verses: no chapters to resample")
    classes = int(scorer.task.num_labels)
    for before, after in pairs:  # tokenisation is per language and tokenizer: setup, as the English answers
        scorer.encoded(before.info, before.tokenizer_path)
        scorer.encoded(after.info, after.tokenizer_path)
    setup = time.process_time() - t0

    scoring = 0.0
    outputs = []
    for pair in pairs:
        row = []
        for table in pair:
            t = time.process_time()
            row.append(scorer.per_example(table.info, table.tensors, table.tokenizer_path,
                                          probabilities if kind == "testament" else predictions))
            scoring += time.process_time() - t
        outputs.append(row)

    weights = replicate_weights(clusters.ids, draws_for(len(chapter_order(clusters.ids))))
    if kind == "testament":
        metrics = {"auc": (lambda p: roc_auc(p[:, 1], labels), lambda p: weighted_auc(p[:, 1], labels, weights)),
                   "agreement": (lambda p: cohen_kappa(p.argmax(1), english, classes),
                                 lambda p: weighted_kappa(p.argmax(1), english, classes, weights))}
    else:
        metrics = {"agreement": (lambda a: cohen_kappa(a, english, classes),
                                 lambda a: weighted_kappa(a, english, classes, weights)),
                   "accuracy": (lambda a: float(np.mean(a == labels)), lambda a: weighted_mean(a == labels, weights))}
    signals = {}
    for name, (point, replicated) in metrics.items():
        sig = gain_signal([point(b) for b, _ in outputs], [point(a) for _, a in outputs],
                          np.stack([replicated(b) for b, _ in outputs]), np.stack([replicated(a) for _, a in outputs]))
        sig["z2_per_scoring_cpu_minute"] = sig["z"] ** 2 / (scoring / 60) if scoring > 0 else math.nan
        signals[name] = sig
    return {"classifier": str(model_dir), "task": scorer.task.name, "language": language,
            "test_examples": int(len(labels)), "class_counts": np.bincount(labels, minlength=classes).tolist(),
            "chapters": len(chapter_order(clusters.ids)), "english_accuracy": scorer.source_accuracy,
            "setup_cpu_seconds": setup, "scoring_cpu_seconds": scoring, "tables_scored": 2 * len(pairs),
            "finetune": finetune_record(model_dir), "headline": HEADLINE[kind], "metrics": signals}


def measure(classifiers: dict[str, str], pairs: list[tuple[Table, Table]], *, eval_examples: int | None = None,
            replicates: int = 1000, seed: int = 0, batch_size: int = 32) -> dict:
    """The whole comparison: {"tables", "bootstrap", "tasks": {kind: score_task(...)}, "comparison"}."""
    if not classifiers:
        raise UserError("give at least one classifier: --genre DIR and/or --testament DIR")
    if not pairs:
        raise UserError("no tables to score: give --runs DIR ... or --before PACK ... --after PACK ...")
    languages = sorted({t.info.language for pair in pairs for t in pair})
    if len(languages) > 1:
        raise UserError(f"the tables are in several languages ({', '.join(languages)}): the bootstrap resamples "
                        "one test set's chapters, so give tables of one language")

    def draws_for(chapters: int) -> np.ndarray:
        return chapter_draws(chapters, replicates, seed)  # the same draws for every task and metric

    tasks = {kind: score_task(kind, d, pairs, eval_examples=eval_examples, draws_for=draws_for,
                              batch_size=batch_size) for kind, d in classifiers.items()}
    return {"tables": [[b.name, a.name] for b, a in pairs], "language": languages[0],
            "bootstrap": {"replicates": replicates, "seed": seed, "clusters": "chapter"},
            "eval_examples": eval_examples, "tasks": tasks, "comparison": comparison(tasks)}


def comparison(tasks: dict) -> str:
    """One line: each task's headline metric's z^2 per scoring CPU minute, and which is larger."""
    parts = []
    for kind, t in tasks.items():
        m = t["metrics"][t["headline"]]
        parts.append(f"{kind} {t['headline']}: z^2/CPU-min {m['z2_per_scoring_cpu_minute']:.3g} "
                     f"(gain {m['gain']:+.4f}, SE {m['se']:.4f}, z {m['z']:.2f})")
    line = "; ".join(parts)
    if set(tasks) == set(TASKS):
        g, t = (tasks[k]["metrics"][HEADLINE[k]]["z2_per_scoring_cpu_minute"] for k in ("genre", "testament"))
        if math.isfinite(g) and math.isfinite(t) and g > 0 and t > 0:
            keep = "testament" if t > g else "genre"
            line += f"; testament/genre {t / g:.2f}x: keep {keep}"
        else:
            line += "; no ratio (a z is undefined or zero)"
    return line


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "nan", "inf": strict JSON has neither
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def table_lines(result: dict) -> list[str]:
    lines = [f"{'task':<10} {'metric':<10} {'before':>7} {'after':>7} {'gain':>8} {'SE':>7} {'z':>7} "
             f"{'score CPU s':>11} {'z^2/CPU min':>11} {'fine-tune s':>11}"]
    for kind, t in result["tasks"].items():
        ft = t["finetune"]["train_seconds"] if t["finetune"] else math.nan
        for name, m in t["metrics"].items():
            lines.append(f"{kind:<10} {name:<10} {np.mean(m['before']):7.4f} {np.mean(m['after']):7.4f} "
                         f"{m['gain']:+8.4f} {m['se']:7.4f} {m['z']:7.2f} {t['scoring_cpu_seconds']:11.1f} "
                         f"{m['z2_per_scoring_cpu_minute']:11.3g} {ft:11.1f}")
    return lines


def main(argv=None) -> None:
    from ds_minimodel.cli.common import run_main

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genre", help="a bible-genre classifier directory (fine-tuning's final/)")
    p.add_argument("--testament", help="a bible-testament classifier directory")
    p.add_argument("--runs", nargs="+", default=[], metavar="DIR",
                   help="study adaptation runs: each gives its initial table (before) and last checkpoint (after)")
    p.add_argument("--before", nargs="+", default=[], metavar="PACK", help="packs scored as 'before'")
    p.add_argument("--after", nargs="+", default=[], metavar="PACK", help="packs scored as 'after', paired in order")
    p.add_argument("--eval-examples", type=int, default=None,
                   help="a seeded subset of the test verses (default: all of them)")
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="runs/metric_signal.json")
    args = p.parse_args(argv)

    def body():
        classifiers = {k: v for k, v in (("genre", args.genre), ("testament", args.testament)) if v}
        pairs = tables_from_packs(args.before, args.after) + tables_from_runs(args.runs)
        result = measure(classifiers, pairs, eval_examples=args.eval_examples, replicates=args.replicates,
                         seed=args.seed, batch_size=args.batch_size)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_jsonable(result), indent=2), encoding="utf-8")
        for t in result["tasks"].values():
            print(f"{t['task']}: {t['test_examples']} test verses in {t['chapters']} chapters "
                  f"({result['language']}), classes {t['class_counts']}, English accuracy {t['english_accuracy']:.3f}")
        print("\n".join(table_lines(result)))
        print(result["comparison"])
        print(f"wrote {out}")

    run_main(body)


if __name__ == "__main__":
    main()
