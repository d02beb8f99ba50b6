"""The learning-rate pilot (issue 25, item 6: a fair comparison): each method gets its learning
rate from a short pilot over a small grid, by the same rule for every method, recorded in
out/lr_pilot.json.

The pilot trains one run per (method, rate): the study's first seed, the same config and --set
as the method's real runs except optim.lr=<rate> and `pilot steps` steps (a quarter of the
method's own steps unless given), one checkpoint and the validation loss at the end. They go
into out/pilot/<method>-lr<rate>/ through experiments.train_runs, so a finished pilot run is
reused, an interrupted one resumed, and one made with other settings refused.

The rule, the same for every method: the rate whose pilot run ends with the lowest validation
loss of its own objective (the valid_final_loss it logged at its last step: the full model's MLM
loss for the baseline, the mini-model's for MiniJoint and MiniPost; they are never compared
across methods, only across one method's rates); a tie goes to the smaller rate (the more
conservative); a run that diverged (its training stopped on a non-finite loss, or its final
validation loss is nan or inf) loses. A shorter run decays its schedule (optim.schedule) over
its own steps, so the pilot is the real run compressed, not its first quarter: the rate that
ends lowest after the whole compressed schedule is the one taken.

A compressed schedule favours the faster rate: on 2026-12-07 a pilot over a fifth of the steps
chose 5e-3 over 2e-3 for every method of the cipher study, and over the whole 1,000 steps the
baseline's own loss ended higher at 5e-3 (4.10 against 4.02; docs/results.md). A pilot given the
method's own steps is therefore the whole schedule: its runs are planned as real runs (the study's
checkpoints, its evaluations), and the chosen rate's run *is* the first seed's run, not trained
again (lr_pilot.json's first_seed_runs). Its cost is one run of the first seed per other rate; the
first seed's run is then the best of the grid on its own loss, for every method alike.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from ds_minimodel.config import ConfigError, read_json_object
from ds_minimodel.errors import InvalidValueError, UserError
from ds_minimodel.study.experiments import (
    CheckedMethod,
    ExperimentOptions,
    check_options,
    plan_runs,
    run_config_problems,
    run_experiments,
    run_settings,
    settings_diffs,
    train_runs,
)
from ds_minimodel.study.runs import own_valid_loss, split_method

RULE = ("lowest validation loss of the method's own objective (valid_final_loss at the pilot run's last step); "
        "ties go to the smaller rate; a diverged run (non-finite loss) loses")
RECORD = "lr_pilot.json"
PILOT_DIR = "pilot"


def lr_tag(lr: float) -> str:
    """A rate as run names and the record's keys spell it: the shortest text that reads back as
    the same float (0.001, 1e-05), so two rates never share a name."""
    return repr(float(lr))


def pilot_steps(opts: ExperimentOptions, checked: list[CheckedMethod]) -> dict[str, int]:
    """{method: its pilot's steps}: opts.pilot_steps (an int for every method, or {method: n},
    by the method's name or its base name), else a quarter of the method's own steps (at least 1):
    with a 3-rate grid the pilot then costs about 3/4 of one seed of the study."""
    given = opts.pilot_steps
    steps = {}
    for m in checked:
        n = given.get(m.method, given.get(split_method(m.method)[0])) if isinstance(given, dict) else given
        steps[m.method] = int(n) if n is not None else max(1, m.steps // 4)
    return steps


def whole_schedule(opts: ExperimentOptions, checked: list[CheckedMethod]) -> set[str]:
    """The methods whose pilot is as long as their runs: the chosen rate's pilot run is the first
    seed's run (the module docstring)."""
    steps = pilot_steps(opts, checked)
    return {m.method for m in checked if steps[m.method] == m.steps}


def plan_pilot(opts: ExperimentOptions, checked: list[CheckedMethod] | None = None
               ) -> list[tuple[str, float, Path, list[str]]]:
    """[(method, rate, run dir, adapt.py overrides)]: each method's rates in increasing order,
    the configs checked (as adapt.py will load them) before anything runs."""
    if not opts.lr_grid:
        raise InvalidValueError("no --lr-grid: the pilot has no rate to try")
    checked = checked if checked is not None else check_options(opts)
    steps, whole = pilot_steps(opts, checked), whole_schedule(opts, checked)
    seed = opts.seeds[0]
    plan = []
    for m in checked:
        # A short pilot: one checkpoint (run_settings puts it, and the run's evaluation, at the last
        # step). The whole schedule: the study's checkpoints, as the first seed's real run.
        checkpoints = opts.checkpoints if m.method in whole else 1
        for lr in sorted(map(float, opts.lr_grid)):
            run_dir = Path(opts.out) / PILOT_DIR / f"{m.method.replace('+', '-')}-lr{lr_tag(lr)}"
            plan.append((m.method, lr, run_dir, run_settings(m.model_dir, m.through, opts.target_data, run_dir,
                                                             steps[m.method], checkpoints, seed, m.init,
                                                             [*opts.overrides, f"optim.lr={lr_tag(lr)}"])))
    problems = run_config_problems(opts.config, [overrides for *_, overrides in plan])
    if problems:
        raise ConfigError("; ".join(problems))
    return plan


def final_valid_loss(run_dir: Path) -> float:
    """The validation loss a run logged at its last evaluated step (metrics.jsonl; nan when it
    logged a non-finite one)."""
    # own_valid_loss reads only the run's metrics.jsonl: a pilot run needs no StudyRun (nor its
    # checkpoints opened) for it.
    losses = own_valid_loss(SimpleNamespace(dir=Path(run_dir)))
    if not losses:
        raise UserError(f"pilot run {run_dir} logged no validation loss (valid_final_loss in its metrics.jsonl): "
                        "the pilot needs the target data's validation split")
    return losses[max(losses)]


def choose(losses: dict[float, float | None]) -> float | None:
    """The rule: the rate of the lowest finite loss, the smaller rate on a tie; None (a diverged
    run) and nan/inf lose. None when every rate diverged."""
    finite = [(loss, lr) for lr, loss in losses.items() if loss is not None and math.isfinite(loss)]
    return min(finite)[1] if finite else None


def _diverged(error: UserError, log_path: Path) -> bool:
    """Whether a failed pilot run stopped on a non-finite loss (training/loop.py's NonFiniteLoss,
    which the adapt launcher prints as its error line), not on anything else."""
    if "non-finite loss" in str(error):
        return True
    try:
        return "error: non-finite loss" in log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def run_pilot(opts: ExperimentOptions, checked: list[CheckedMethod] | None = None,
              runner: Callable[[list, Path], float] | None = None, log: Callable[[str], None] = print) -> dict:
    """Train (or reuse) every pilot run, choose each method's rate by the rule, write
    out/lr_pilot.json and return its record. A run that diverges is marked
    (<run dir>.diverged beside it, so a re-run does not train it again) and loses; any other
    failure stops the study, as a real run's would."""
    from ds_minimodel.training.checkpoint import write_atomic

    checked = checked if checked is not None else check_options(opts)
    plan = plan_pilot(opts, checked)
    logs = Path(opts.out) / PILOT_DIR / "logs"
    steps: dict[str, int] = {}
    losses: dict[str, dict[float, float | None]] = {}
    for method, lr, run_dir, overrides in plan:
        steps[method] = int(dict(o.split("=", 1) for o in overrides)["train.steps"])
        marker = run_dir.with_name(run_dir.name + ".diverged")
        loss: float | None
        if marker.is_file() and not settings_diffs(run_dir, overrides):
            log(f"[{run_dir.name}] diverged before ({marker.read_text(encoding='utf-8').strip()}): not trained again")
            loss = None
        else:
            try:
                train_runs([(run_dir, overrides)], opts.config, opts.ds_config, logs, runner, log)
            except UserError as e:
                if not _diverged(e, logs / f"{run_dir.name}.log"):
                    raise
                marker.write_text(f"{e}\n", encoding="utf-8")
                log(f"[{run_dir.name}] diverged: rate {lr_tag(lr)} loses the pilot")
                loss = None
            else:
                marker.unlink(missing_ok=True)  # a stale marker of a run removed and trained again
                loss = final_valid_loss(run_dir)
        losses.setdefault(method, {})[lr] = loss if loss is not None and math.isfinite(loss) else None
    record = {"rule": RULE, "steps": steps, "seed": opts.seeds[0], "grid": sorted(map(float, opts.lr_grid)),
              "methods": {method: {"losses": {lr_tag(lr): loss for lr, loss in by_lr.items()},
                                   "diverged": [lr for lr, loss in by_lr.items() if loss is None],
                                   "chosen": choose(by_lr)}
                          for method, by_lr in losses.items()}}
    whole = whole_schedule(opts, checked)
    dirs = {(method, lr): run_dir for method, lr, run_dir, _ in plan}
    record["first_seed_runs"] = {method: str(dirs[method, entry["chosen"]]) for method, entry in record["methods"].items()
                                 if method in whole and entry["chosen"] is not None}
    path = Path(opts.out) / RECORD
    write_atomic(path, json.dumps(record, indent=1))
    failed = [m for m, entry in record["methods"].items() if entry["chosen"] is None]
    if failed:
        raise UserError(f"the learning-rate pilot of {', '.join(failed)} diverged at every rate of --lr-grid "
                        f"{' '.join(map(lr_tag, record['grid']))} (see {path}): try smaller rates")
    for method, entry in record["methods"].items():
        log(f"[pilot] {method}: optim.lr={lr_tag(entry['chosen'])}")
    return record


def read_lr_pilot(out_dir: str | Path) -> dict | None:
    """The pilot's record in a study's out directory (None: the study ran no pilot)."""
    path = Path(out_dir) / RECORD
    return read_json_object(path) if path.is_file() else None


def markdown(record: dict) -> list[str]:
    """study.md's section: the rule, then one row per method with each rate's final loss and the
    rate chosen."""
    grid = [lr_tag(lr) for lr in record["grid"]]
    steps = ", ".join(f"{m} {n}" for m, n in record["steps"].items())
    lines = ["## Learning-rate pilot", "",
             f"One pilot run per method and rate (seed {record['seed']}; steps: {steps}). Rule, the same for every "
             f"method: {record['rule']}. Losses are each method's own objective, comparable across its rates only."
             + (f" The pilot of {', '.join(record['first_seed_runs'])} ran the whole schedule: the chosen rate's pilot "
                f"run is seed {record['seed']}'s run." if record.get("first_seed_runs") else ""),
             "", "| method | " + " | ".join(f"lr {lr}" for lr in grid) + " | chosen |",
             "| --- | " + " | ".join("---:" for _ in grid) + " | ---: |"]
    for method, entry in record["methods"].items():
        cells = []
        for lr in grid:
            loss = entry["losses"].get(lr)
            cells.append("diverged" if loss is None else f"{loss:.4f}")
        chosen = "none" if entry["chosen"] is None else lr_tag(entry["chosen"])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {chosen} |")
    return lines


def run_with_pilot(opts: ExperimentOptions, runner: Callable[[list, Path], float] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, list[Path]]:
    """experiments.run_experiments with each method's learning rate chosen by the pilot first: the
    real runs' configs are checked before the pilot trains anything."""
    checked = check_options(opts)
    plan_runs(opts, checked)
    record = run_pilot(opts, checked, runner, log)
    first = {method: Path(d) for method, d in record["first_seed_runs"].items()}
    for method, d in first.items():
        log(f"[pilot] {method}: the whole schedule; seed {opts.seeds[0]}'s run is {d}")
    return run_experiments(opts, runner, log, {method: entry["chosen"] for method, entry in record["methods"].items()},
                           first)
