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

import math
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
    # Learning rates of the pilot (lr_pilot.py): when given, each method's runs train with the
    # rate its short pilot chose, by the same rule for every method; empty: the config's optim.lr.
    lr_grid: tuple[float, ...] = ()
    # Pilot steps: an int (every method) or {method: n}; a method without one gets a quarter of
    # its own steps (lr_pilot.pilot_steps).
    pilot_steps: int | dict | None = None


def plan_experiments(opts: ExperimentOptions, lrs: dict[str, float] | None = None
                     ) -> list[tuple[str, int, Path, list[str]]]:
    """[(method, seed, run dir, adapt.py overrides)], seed by seed (every method of seed 0 first,
    so an interrupted study has whole seeds), checked before anything runs. lrs: {method: its
    learning rate} (the pilot's choices), appended to that method's overrides as optim.lr."""
    return plan_runs(opts, check_options(opts), lrs)


@dataclass
class CheckedMethod:
    """A study method with what its runs adapt: its steps, source model and body."""
    method: str
    steps: int
    model_dir: Path
    through: str
    init: str  # adapt.init of its runs


def check_options(opts: ExperimentOptions) -> list[CheckedMethod]:
    """Every input of the study checked before anything runs (the learning-rate grid too), and
    each method's source model and body selected as adapt.py will select them."""
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
    check_lr_grid(opts)
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
    checked = []
    for method in opts.methods:
        base, init = split_method(method)
        # The body each run will train through, selected as adapt.py will: a model without a mid
        # head (minijoint) or a full model given as --minipost fails here, not after an hour.
        planned = AdaptConfig(adapt=AdaptSettings(model_dir=str(sources[base][0]), through=sources[base][1]))
        _, _, selected, _, _ = adapt_body(planned, f"method {method}")
        if selected != base:
            raise InvalidValueError(f"method {method}: {sources[base][0]} adapts as {selected!r}, not {base!r}")
        steps = int(opts.steps.get(method, opts.steps.get(base, 0)))
        if steps < 1:
            raise InvalidValueError(f"steps for {method} must be positive, got {opts.steps.get(method)}")
        checked.append(CheckedMethod(method, steps, Path(sources[base][0]), sources[base][1], init or opts.init))
    return checked


def check_lr_grid(opts: ExperimentOptions) -> None:
    """The pilot's grid and steps: positive, finite, each rate once; no optim.lr in --set beside
    a grid (the pilot chooses it); pilot steps only with a grid, each positive, each named method
    a method."""
    grid = tuple(opts.lr_grid)
    if not grid:
        if opts.pilot_steps not in (None, {}):
            raise InvalidValueError("--pilot-steps needs --lr-grid (the rates the pilot tries)")
        return
    bad = [lr for lr in grid if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0)]
    if bad:
        raise InvalidValueError(f"--lr-grid: learning rates must be positive numbers, got {', '.join(map(str, bad))}")
    if len(set(map(float, grid))) != len(grid):
        raise InvalidValueError(f"--lr-grid {' '.join(map(str, grid))} names a rate twice")
    if any(o.split("=", 1)[0] == "optim.lr" for o in opts.overrides):
        raise InvalidValueError("--set optim.lr and --lr-grid: the pilot chooses each method's learning rate; "
                                "give one or the other")
    steps = opts.pilot_steps
    if isinstance(steps, dict):
        unknown = [m for m in steps if split_method(m)[0] not in METHODS]
        if unknown:
            raise InvalidValueError(f"--pilot-steps names {', '.join(unknown)}, which is no method")
        values = list(steps.items())
    else:
        values = [("every method", steps)] if steps is not None else []
    bad_steps = [f"{m}={n}" for m, n in values if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad_steps:
        raise InvalidValueError(f"--pilot-steps must be positive integers, got {', '.join(bad_steps)}")


def plan_runs(opts: ExperimentOptions, checked: list[CheckedMethod], lrs: dict[str, float] | None = None,
              first_seed_runs: dict[str, Path] | None = None) -> list[tuple[str, int, Path, list[str]]]:
    """plan_experiments over methods check_options has checked. `first_seed_runs`: {method: run
    dir} for a method whose first seed's run is already planned elsewhere (a whole-schedule pilot's
    run of the chosen rate, lr_pilot.py), with the settings that run would have here."""
    lrs, first_seed_runs = lrs or {}, first_seed_runs or {}
    plan = []
    for seed in opts.seeds:
        for m in checked:
            run_dir = Path(opts.out) / f"adapt-{m.method.replace('+', '-')}-s{seed}"
            if seed == opts.seeds[0] and m.method in first_seed_runs:
                run_dir = Path(first_seed_runs[m.method])
            extra = [*opts.overrides, *([f"optim.lr={lrs[m.method]}"] if m.method in lrs else [])]
            plan.append((m.method, seed, run_dir, run_settings(m.model_dir, m.through, opts.target_data, run_dir,
                                                               m.steps, opts.checkpoints, seed, m.init, extra)))
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


def settings_diffs(run_dir: Path, overrides: list[str]) -> list[str]:
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
                    log: Callable[[str], None] = print, lrs: dict[str, float] | None = None,
                    first_seed_runs: dict[str, Path] | None = None) -> dict[str, list[Path]]:
    """Run (or finish, or reuse) each method's adaptation runs, one after another so that each
    run's wall-clock is measured on an otherwise idle machine. Returns {method: [run dir per seed]}.
    runner(cmd, log_path) runs one command (default: `subprocess_runner.run_command`, as the
    pipeline does). `lrs`: each method's learning rate, as the pilot chose it (a study with
    opts.lr_grid runs through lr_pilot.run_with_pilot, which chooses them first); `first_seed_runs`:
    the whole-schedule pilot's runs that are the first seed's (plan_runs)."""
    if opts.lr_grid and lrs is None:
        raise InvalidValueError("a study with --lr-grid runs its pilot first (lr_pilot.run_with_pilot)")
    plan = plan_runs(opts, check_options(opts), lrs, first_seed_runs)
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
            diffs = settings_diffs(run_dir, overrides)
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
