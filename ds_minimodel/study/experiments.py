"""Training the study's adaptation runs: one per method and seed (`adapt-<method>-s<seed>`),
through the real adapt launcher, one after another (so that each wall-clock is measured on an
otherwise idle machine), reused when finished and resumed when interrupted.

A method is `full`, `minijoint` or `minipost`, optionally with its own initialisation of the new
embeddings, `METHOD+INIT` (e.g. `minipost+focus`, run directory `adapt-minipost-focus-s0`); every
other run starts as `ExperimentOptions.init` says (default "random": the paper's setting).

train.seed drives everything random in a run: the new embeddings' initialisation
(adapt.init_embeddings), the data order (the loader's per-epoch permutation) and the MLM masks;
seed s of every method shares all three, which is what lets the bootstrap pair them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ds_minimodel import shipped
from ds_minimodel.config import INITS, AdaptConfig, AdaptSettings, ConfigError, load_config
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.study.runs import METHODS, adapt_body, split_method
from ds_minimodel.subprocess_runner import run_command


@dataclass
class ExperimentOptions:
    """Three adaptation runs (or a subset) with checkpoints dense enough for a study."""
    out: Path
    pretrained: Path
    target_data: Path
    minipost: Path | None = None
    methods: tuple[str, ...] = METHODS
    # Steps per method. Mini-model steps are ~3x cheaper at the CPU demo's shapes (8 layers, k=2),
    # so 3x the baseline's steps gives each method about the same FLOP budget.
    steps: dict = field(default_factory=lambda: {"full": 300, "minijoint": 900, "minipost": 900})
    checkpoints: int = 10  # per run, evenly spaced (the last one at train.steps)
    seeds: tuple[int, ...] = (0, 1, 2)  # train.seed of each method's runs
    config: str = "configs/adapt-demo.yaml"
    ds_config: str = "ds_configs/z0.json"
    overrides: list = field(default_factory=list)  # extra key=value for every run (e.g. optim.lr=1e-3)
    init: str = "random"  # adapt.init of every method without its own (+INIT)
    # The standard baseline's model (the paper's regular model, no mid head); None: `pretrained`.
    baseline_pretrained: Path | None = None


def plan_experiments(opts: ExperimentOptions) -> list[tuple[str, int, Path, list[str]]]:
    """[(method, seed, run dir, adapt.py overrides)], seed by seed (every method of seed 0 first,
    so an interrupted study has whole seeds), checked before anything runs."""
    if opts.checkpoints < 1:
        raise InvalidValueError(f"--checkpoints must be >= 1, got {opts.checkpoints}")
    if not opts.seeds:
        raise InvalidValueError("the study needs at least one seed")
    if len(set(opts.seeds)) != len(opts.seeds):
        raise InvalidValueError(f"seeds {list(opts.seeds)} repeat a seed")
    if any(o.split("=", 1)[0] in ("train.seed", "train.eval_every", "adapt.init") for o in opts.overrides):
        raise InvalidValueError("--set train.seed / train.eval_every / adapt.init: the study sets them (--seeds, an "
                                "evaluation at every checkpoint, --init or METHOD+INIT)")
    unknown = [m for m in opts.methods if split_method(m)[0] not in METHODS
               or split_method(m)[1] not in (None, *INITS)]
    if unknown:
        raise InvalidValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}, each "
                                f"optionally +INIT ({'|'.join(INITS)}), e.g. minipost+focus")
    if opts.init not in INITS:
        raise InvalidValueError(f"--init must be one of {'|'.join(INITS)}, got {opts.init!r}")
    if len(set(opts.methods)) != len(opts.methods):
        raise InvalidValueError(f"--methods {' '.join(opts.methods)} names a method twice")
    if "full" not in opts.methods:
        raise InvalidValueError("the study needs the baseline: --methods must include 'full'")
    for label, path in (("--pretrained", opts.pretrained), ("--target-data", opts.target_data),
                        ("--baseline-pretrained", opts.baseline_pretrained or opts.pretrained)):
        if not Path(path).is_dir():
            raise MissingFileError(f"{label} {path} does not exist")
    if not (Path(opts.target_data) / "index.json").is_file():
        raise MissingFileError(f"--target-data {opts.target_data} is not a dataset (no index.json; "
                               "make it with launchers/prepare_data.py --recipe bible-<language>)")
    if any(split_method(m)[0] == "minipost" for m in opts.methods):
        if opts.minipost is None:
            raise InvalidValueError("method minipost needs --minipost DIR (a MiniPost model: make pipeline's "
                                    "runs/pipeline/minipost/final), or leave it out of --methods")
        if not Path(opts.minipost).is_dir():
            raise MissingFileError(f"--minipost {opts.minipost} does not exist")
    sources = {"full": (opts.baseline_pretrained or opts.pretrained, "full"), "minijoint": (opts.pretrained, "mini"),
               "minipost": (opts.minipost, "mini")}
    plan = []
    per_method = []
    for method in opts.methods:
        base, _ = split_method(method)
        # The body each run will train through, selected as adapt.py will: a model without a mid
        # head (minijoint) or a full model given as --minipost fails here, not after an hour.
        planned = AdaptConfig(adapt=AdaptSettings(model_dir=str(sources[base][0]), through=sources[base][1]))
        _, _, selected, _, _ = adapt_body(planned, f"method {method}")
        if selected != base:
            raise InvalidValueError(f"method {method}: {sources[base][0]} adapts as {selected!r}, not {base!r}")
        steps = int(opts.steps.get(method, opts.steps.get(base, 0)))
        if steps < 1:
            raise InvalidValueError(f"steps for {method} must be positive, got {opts.steps.get(method)}")
        per_method.append((method, steps))
    for seed in opts.seeds:
        for method, steps in per_method:
            base, init = split_method(method)
            run_dir = Path(opts.out) / f"adapt-{method.replace('+', '-')}-s{seed}"
            plan.append((method, seed, run_dir, run_settings(*sources[base], opts.target_data, run_dir, steps,
                                                             opts.checkpoints, seed, init or opts.init,
                                                             opts.overrides)))
    problems = run_config_problems(opts.config, [overrides for *_, overrides in plan])
    if problems:
        raise ConfigError("; ".join(problems))
    return plan


def run_config_problems(config: str, runs: list[list[str]]) -> list[str]:
    """Each distinct problem of the planned runs' configs, loaded as adapt.py will load them
    (the --config YAML, the run's settings, --set last): a misspelt key or a bad value in --set
    fails before anything trains, with the config file's one-line error, not when the first
    run starts."""
    path = _config_path(config)
    problems: list[str] = []
    for overrides in runs:
        try:
            load_config(AdaptConfig, path, overrides)
        except ConfigError as e:
            if f"the adaptation runs' config: {e}" not in problems:  # the same --set in every run: said once
                problems.append(f"the adaptation runs' config: {e}")
    return problems


def run_settings(model_dir, through: str, target_data, run_dir: Path, steps: int, checkpoints: int, seed: int,
                 init: str, extra: list[str]) -> list[str]:
    """adapt.py's overrides for one study run: `checkpoints` evenly spaced checkpoints (the last at
    `steps`), each kept, and the run's own validation loss at each."""
    save_every = max(1, -(-steps // checkpoints))  # ceil: at most `checkpoints` saves, the last at `steps`
    saves = steps // save_every + (1 if steps % save_every else 0)
    # eval_every = save_every: the run's own validation loss at every checkpoint (study.json's
    # own_valid_loss; evaluation time is not counted in train_seconds).
    return [f"adapt.model_dir={Path(model_dir).resolve()}", f"adapt.through={through}",
            f"data.path={Path(target_data).resolve()}", f"train.out_dir={Path(run_dir).resolve()}",
            f"train.steps={steps}", f"train.save_every={save_every}", f"train.keep_last={saves + 1}",
            f"train.seed={seed}", f"train.eval_every={save_every}", "train.progress=false",
            f"adapt.init={init}", *extra]


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _planned_matches(run_dir: Path, overrides: list[str]) -> list[str]:
    """The planned settings that a run already in run_dir was not made with."""

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ["config.yaml unreadable"]
    diffs = []
    for item in overrides:
        key, value = item.split("=", 1)
        if key in ("train.progress", "train.keep_last"):
            continue
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != value and not _same_number(node, value):
            diffs.append(f"{key}={node} (planned {value})")
    return diffs


def _config_path(path: str) -> str:
    """A config as given when it exists from here, else the package's copy of a configs/... or
    ds_configs/... name (shipped.find, as every step resolves it), as an absolute path."""
    p = shipped.find(path)
    if not p.exists():
        raise MissingFileError(f"{path} does not exist")
    return str(p.resolve())


def run_experiments(opts: ExperimentOptions, runner: Callable[[list, Path], float] | None = None,
                    log: Callable[[str], None] = print) -> dict[str, list[Path]]:
    """Run (or finish, or reuse) each method's adaptation runs, one after another so that each
    run's wall-clock is measured on an otherwise idle machine. Returns {method: [run dir per seed]}.
    runner(cmd, log_path) runs one command (default: `subprocess_runner.run_command`, as the
    pipeline does)."""
    plan = plan_experiments(opts)
    train_runs([(run_dir, overrides) for _, _, run_dir, overrides in plan], opts.config, opts.ds_config,
               Path(opts.out) / "logs", runner, log)
    runs: dict[str, list[Path]] = {}
    for method, _, run_dir, _ in plan:
        runs.setdefault(method, []).append(run_dir)
    return runs


def train_runs(plan: list[tuple[Path, list[str]]], config: str, ds_config: str, logs: Path,
               runner: Callable[[list, Path], float] | None = None, log: Callable[[str], None] = print) -> None:
    """Train each (run dir, adapt.py overrides) through the adapt launcher, in order, logging to
    logs/<run dir name>.log. A run whose pack exists is reused when it was made with the planned
    settings; a run that stopped half-way is resumed (--resume); one made with other settings is
    refused."""
    runner = runner or run_command
    logs.mkdir(parents=True, exist_ok=True)
    for run_dir, overrides in plan:
        name = run_dir.name
        resume = (run_dir / "config.yaml").is_file()
        if resume:
            diffs = _planned_matches(run_dir, overrides)
            if diffs:
                raise UserError(f"{run_dir} holds an adaptation run made with other settings ({'; '.join(diffs)}); "
                                "remove it or choose another --out")
        if (run_dir / "pack" / "pack.json").is_file():
            log(f"[{name}] already done ({run_dir})")
            continue
        settings = dict(o.split("=", 1) for o in overrides)
        log(f"[{name}] {'resuming' if resume else 'training'}: {settings['train.steps']} steps, a checkpoint every "
            f"{settings['train.save_every']}, seed {settings['train.seed']}")
        cmd = [sys.executable, "-m", "ds_minimodel.cli.adapt", "--deepspeed", _config_path(ds_config),
               "--config", _config_path(config), *(["--resume"] if resume else []), *overrides]
        runner(cmd, logs / f"{name}.log")
