"""The frontier: how the saving depends on the mini-model's depth k and the new vocabulary's size.

At one fixed full model (depth L, the paper's regular model), each point (k, V) is a MiniPost
mini-model of the bottom k layers plus one new top layer, adapting to a target-language
tokenizer of V pieces, compared with the standard baseline (the full model) at the same V:

- the per-step FLOP ratio and the per-step wall-clock ratio (full / mini, measured in the runs);
- the steps the mini-model needs to reach the baseline's final metric, and the compute ratio
  at that matched metric with its bootstrap interval (compare.py, for accuracy and MLM loss);
- the MLM head's share of a mini step's FLOPs: the part that does not shrink with k.

Every arm gets the baseline's FLOP budget by default (its steps = the baseline's FLOPs over its
own per-step FLOPs), so a cheap arm gets more steps, not less room. The runs, their seeds and
the scoring are the study's own (experiments.train_runs, compare.compare_runs); this module
prepares the inputs (one dataset per V, one MiniPost per k) and tabulates the points.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ds_minimodel import shipped
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.config import AdaptConfig, load_config, read_json_object
from ds_minimodel.data.bibles import BIBLE_RECIPES
from ds_minimodel.errors import InvalidValueError, MissingFileError
from ds_minimodel.method import flops
from ds_minimodel.method.methods import ADAPT_KIND
from ds_minimodel.study.compare import StudyOptions, compare_runs
from ds_minimodel.study.experiments import run_config_problems, run_settings, train_runs
from ds_minimodel.study.render import plot_sweep, plug_gaps, sweep_section
from ds_minimodel.study.runs import adapt_body
from ds_minimodel.subprocess_runner import run_command
from ds_minimodel.training.checkpoint import write_atomic


@dataclass
class SweepOptions:
    out: Path
    pretrained: Path  # the full model every point is carved from (fixed L)
    english_data: Path  # what each MiniPost top layer is trained on
    target_recipe: str  # prepare_data.py --recipe: one tokenizer + dataset per vocabulary size
    target_max_chars: int | None = None  # prepare_data.py --max-chars (a smaller corpus; tests)
    ks: tuple[int, ...] = (1, 2, 3, 4)
    vocabs: tuple[int, ...] = (8000, 32000)
    full_steps: int = 300
    mini_steps: int | None = None  # None: each arm's steps give it the baseline's FLOP budget x `budget`
    budget: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)
    checkpoints: int = 8
    config: str = "configs/adapt-demo.yaml"
    minipost_config: str = "configs/minipost-demo.yaml"
    ds_config: str = "ds_configs/z0.json"
    overrides: list = field(default_factory=list)  # adapt.py key=value for every run
    minipost_overrides: list = field(default_factory=list)  # minipost.py key=value for every MiniPost


def check_options(opts: SweepOptions) -> int:
    """Every input checked before anything runs; returns the full model's depth L."""
    if opts.target_recipe not in BIBLE_RECIPES:
        raise InvalidValueError(f"--target-recipe {opts.target_recipe!r} is not a built-in corpus "
                                f"({', '.join(sorted(BIBLE_RECIPES))})")
    for label, path in (("--pretrained", opts.pretrained), ("--english-data", opts.english_data)):
        if not Path(path).is_dir():
            raise MissingFileError(f"{label} {path} does not exist")
    if not (Path(opts.english_data) / "index.json").is_file():
        raise MissingFileError(f"--english-data {opts.english_data} is not a dataset (no index.json)")
    _, cfg, _ = read_model_dir(opts.pretrained)
    problems = []
    if cfg.mini_depth is not None:
        problems.append(f"--pretrained {opts.pretrained} has a mid head (layer {cfg.mini_depth}): the sweep "
                        "carves MiniPost mini-models from a regular model")
    bad_k = [k for k in opts.ks if not 1 <= k < cfg.num_layers]
    if bad_k or not opts.ks or len(set(opts.ks)) != len(opts.ks):
        problems.append(f"k={','.join(map(str, opts.ks))}: each k once, in 1..{cfg.num_layers - 1} (L = "
                        f"{cfg.num_layers})")
    if not opts.vocabs or len(set(opts.vocabs)) != len(opts.vocabs) or min(opts.vocabs) < 100:
        problems.append(f"vocab={','.join(map(str, opts.vocabs))}: each size once, at least 100")
    if opts.full_steps < 1 or (opts.mini_steps is not None and opts.mini_steps < 1) or opts.budget <= 0:
        problems.append("steps and the budget must be positive")
    if not opts.seeds or len(set(opts.seeds)) != len(opts.seeds):
        problems.append(f"seeds {list(opts.seeds)}: at least one, none twice")
    if opts.checkpoints < 1:
        problems.append(f"checkpoints must be >= 1, got {opts.checkpoints}")
    # --set reaches every run: checked now with the baseline's settings, not after the datasets and
    # MiniPosts are made (an arm differs only in its body and its steps).
    problems += run_config_problems(opts.config, [
        run_settings(opts.pretrained, "full", dataset_dir(opts, v), Path(opts.out) / f"v{v}" / f"adapt-full-s{seed}",
                     max(opts.full_steps, 1), max(opts.checkpoints, 1), seed, "random", opts.overrides)
        for v in opts.vocabs[:1] for seed in opts.seeds])
    if problems:
        raise InvalidValueError("; ".join(problems))
    return cfg.num_layers


def dataset_dir(opts: SweepOptions, vocab: int) -> Path:
    return Path(opts.out) / "data" / f"{opts.target_recipe}-v{vocab}"


def minipost_dir(opts: SweepOptions, k: int) -> Path:
    return Path(opts.out) / f"minipost-k{k}"


def prepare_inputs(opts: SweepOptions, runner: Callable[[list, Path], float] | None = None,
                   log: Callable[[str], None] = print) -> None:
    """One target dataset per vocabulary size (a tokenizer of at most V pieces: the corpus may have
    fewer distinct ones) and one MiniPost model per k; each reused when present."""
    runner = runner or run_command
    logs = Path(opts.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    for v in opts.vocabs:
        out = dataset_dir(opts, v)
        if (out / "index.json").is_file():
            log(f"[data v{v}] already done ({out})")
            continue
        log(f"[data v{v}] {opts.target_recipe}, at most {v} pieces")
        runner([py, "-m", "ds_minimodel.cli.prepare_data", "--recipe", opts.target_recipe, "--out", str(out),
                "--vocab-size", str(v), "--vocab-limit", "soft", "--overwrite",
                *(["--max-chars", str(opts.target_max_chars)] if opts.target_max_chars else [])], logs / f"data-v{v}.log")
    for k in opts.ks:
        out = minipost_dir(opts, k)
        if (out / "final" / "model.pt").is_file():
            log(f"[minipost k={k}] already done ({out})")
            continue
        log(f"[minipost k={k}] layers 1..{k} of {opts.pretrained} + one new top layer")
        runner([py, "-m", "ds_minimodel.cli.minipost", "--resume", "--deepspeed", str(shipped.find(opts.ds_config).resolve()),
                "--config", str(shipped.find(opts.minipost_config).resolve()), f"minipost.source={Path(opts.pretrained).resolve()}",
                f"minipost.mini_depth={k}", "minipost.top_layers=1", f"data.path={Path(opts.english_data).resolve()}",
                f"train.out_dir={out.resolve()}", *opts.minipost_overrides], logs / f"minipost-k{k}.log")


def arm_step_flops(opts: SweepOptions, model_dir: Path, through: str, vocab_size: int) -> flops.FlopReport:
    """FLOPs of one micro-batch of an arm (its body at the target vocabulary), with the expected
    number of masked positions."""
    cfg = load_config(AdaptConfig, shipped.find(opts.config),
                      [f"adapt.model_dir={model_dir}", f"adapt.through={through}", *opts.overrides])
    _, body_cfg, method, _, _ = adapt_body(cfg, f"sweep arm {model_dir}")
    b, t = cfg.train.micro_batch_size, cfg.data.seq_len
    return flops.step_flops(dataclasses.replace(body_cfg, vocab_size=vocab_size), ADAPT_KIND[method], b, t,
                            flops.expected_masked(b, t, cfg.data.mask_prob))


def _vocab_size(opts: SweepOptions, vocab: int) -> int:
    """The tokenizer's real size (soft limit: at most `vocab`)."""
    from ds_minimodel.steps.mlm_job import open_corpus

    return open_corpus(dataset_dir(opts, vocab)).tokenizer().vocab_size


def plan_runs(opts: SweepOptions) -> dict[int, dict[str, dict]]:
    """{V: {arm name: {"model_dir", "through", "steps", "step_flops", "head_share", "vocab_size",
    "runs": [(run dir, adapt.py overrides) per seed]}}}; "full" first, then "k1", "k2", ..."""
    plan = {}
    for v in opts.vocabs:
        size = _vocab_size(opts, v)
        arms = {"full": (Path(opts.pretrained).resolve(), "full")}
        arms.update({f"k{k}": ((minipost_dir(opts, k) / "final").resolve(), "mini") for k in opts.ks})
        reports = {name: arm_step_flops(opts, d, through, size) for name, (d, through) in arms.items()}
        per_vocab = {}
        for name, (model_dir, through) in arms.items():
            r = reports[name]
            steps = opts.full_steps if name == "full" else opts.mini_steps or math.ceil(
                opts.budget * opts.full_steps * reports["full"].total / r.total)
            runs = []
            for seed in opts.seeds:
                run_dir = Path(opts.out) / f"v{v}" / f"adapt-{name}-s{seed}"
                runs.append((run_dir, run_settings(model_dir, through, dataset_dir(opts, v), run_dir, steps,
                                                   opts.checkpoints, seed, "random", opts.overrides)))
            per_vocab[name] = {"model_dir": str(model_dir), "through": through, "steps": steps,
                               "step_flops": r.total, "head_share": r.components["final_head"].total / r.total,
                               "vocab_size": size, "runs": runs}
        plan[v] = per_vocab
    return plan


def run_sweep(opts: SweepOptions, scorer, study_opts: StudyOptions | None = None,
              runner: Callable[[list, Path], float] | None = None, log: Callable[[str], None] = print) -> dict:
    """Prepare, train (seed by seed, each vocabulary's arms together), score and tabulate; writes
    sweep.json, sweep.md and sweep.png into opts.out (each vocabulary's study in out/v<V>/)."""
    check_options(opts)
    prepare_inputs(opts, runner, log)
    plan = plan_runs(opts)
    for v, arms in plan.items():
        by_seed = [arm["runs"][i] for i in range(len(opts.seeds)) for arm in arms.values()]
        train_runs(by_seed, opts.config, opts.ds_config, Path(opts.out) / f"v{v}" / "logs", runner, log)
    points, level = [], None
    for v, arms in plan.items():
        study = compare_runs({name: [d for d, _ in arm["runs"]] for name, arm in arms.items()}, scorer,
                             Path(opts.out) / f"v{v}", study_opts, log)
        points += sweep_points(v, arms, study)
        level = study["level"]
    result = {"pretrained": str(opts.pretrained), "target_recipe": opts.target_recipe, "ks": list(opts.ks),
              "vocabs": list(opts.vocabs), "seeds": list(opts.seeds), "budget": opts.budget, "level": level,
              "mini_steps": opts.mini_steps, "points": points,
              "studies": {str(v): str(Path(opts.out) / f"v{v}" / "study.json") for v in plan}}
    out = Path(opts.out)
    write_atomic(out / "sweep.json", json.dumps(result, indent=1))
    plot_sweep(result, out / "sweep.png")
    write_atomic(out / "sweep.md", "\n".join(sweep_section(result, "sweep.png")) + "\n")
    return result


def _mean_per_step(study: dict, name: str, key: str) -> float:
    """A run's total FLOPs or seconds per step, averaged over its seeds (from the scored curves)."""
    seeds = study["metrics"][study["metric"]]["curves"][name]["per_seed"].values()
    steps = study["metrics"][study["metric"]]["curves"][name]["steps"][-1]
    return sum(s[key][-1] for s in seeds) / len(seeds) / steps


def sweep_points(vocab: int, arms: dict, study: dict) -> list[dict]:
    """One row per k: what the per-vocabulary study measured, next to the arm's analytic step."""
    full_flops, full_seconds = _mean_per_step(study, "full", "flops"), _mean_per_step(study, "full", "seconds")
    gaps = plug_gaps(study["metrics"]["mlm_loss"]) if "mlm_loss" in study["metrics"] else {}
    rows = []
    for name, arm in arms.items():
        if name == "full":
            continue
        row = {"k": int(name[1:]), "vocab": vocab, "vocab_size": arm["vocab_size"], "steps": arm["steps"],
               "step_flops_ratio": full_flops / _mean_per_step(study, name, "flops"),
               "step_seconds_ratio": full_seconds / _mean_per_step(study, name, "seconds"),
               "head_share": arm["head_share"], "baseline_step_head_share": arms["full"]["head_share"]}
        if name in gaps:
            row["plug_gap"] = gaps[name]["beyond"]
        for metric, s in study["metrics"].items():
            m = s["matched"]["methods"][name]
            row[metric] = {"ratio": m["ratio_value"], "interval": m["interval_flops"],
                           "steps_to_target": m["step_to_target"], "wallclock_ratio": m["ratio_seconds"],
                           "target": s["matched"]["target"], "note": m.get("note", ""),
                           # how render.py reads the ratio: a bound, words, the replicates behind the interval
                           "outcome": m.get("outcome"), "ratio_bound": m.get("ratio_bound"),
                           "total_flops": m.get("total_flops"), "n": m.get("interval_defined"),
                           "replicates": m.get("interval_replicates"), "interval_note": m.get("interval_note")}
        rows.append(row)
    return rows


def merge_into_study(result: dict, out_dir: Path, study_dir: Path) -> bool:
    """Put the sweep (written into out_dir) into study_dir's study.json (key "sweep") and re-render
    its study.md; False when that study has not been written."""
    from ds_minimodel.study.render import markdown as study_markdown

    path = Path(study_dir) / "study.json"
    if not path.is_file():
        return False
    study = read_json_object(path)
    study["sweep"] = {**result, "plot": str(Path(os.path.relpath(out_dir, study_dir)) / "sweep.png")}
    write_atomic(path, json.dumps(study, indent=1))
    write_atomic(Path(study_dir) / "study.md", study_markdown(study))
    return True
