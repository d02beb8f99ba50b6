"""Studies and pipelines as files: `studies/*.yaml` and `studies/pipelines/*.yaml`.

A spec is the command line of `launchers/study.py` or `launchers/pipeline.py` written down, with
a name, a comment and the strict loading of the configs (config.py: unknown keys, bad types and bad
values, every problem reported in one line before anything runs):

    python launchers/study.py --spec studies/quick.yaml [--plan] [seeds=1 out=runs/x ...]
    python launchers/pipeline.py --spec studies/pipelines/demo.yaml [--plan] [steps.pretrain=100 ...]

`--spec quick` is `studies/quick.yaml` (`studies/pipelines/quick.yaml` for a pipeline); the
package's copy is used when no such file is here (shipped.py), so an installed package runs the
shipped studies from any directory. `key=value` items after the spec override it (a dotlist, as
for configs).

A study spec names the models it adapts from, the target languages, the methods with their steps,
the seeds and checkpoints, the adaptation config and the metrics. It runs as a few commands, each
printed before it starts (`--plan` prints them and stops):
  1. its pipeline spec, when it names one (finished steps are reused), which builds the models;
  2. per language, `prepare_data --recipe` when the language's data directory is missing;
  3. per language, `study.py --run-experiments` (or `--sweep`) into `out` (`out/<code>` when there
     are several languages);
  4. with several languages, `study.py --average` of them into `out`.
The pipeline, the study and the average are separate processes, as a user would run them; each
resumes where it stopped, so a spec re-run after an interruption goes on.

metrics.require_transfer is the transfer check (study/transfer_check.py): no ratio unless the
bodies passed their gate and the standard baseline beat its random-embedding control.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ds_minimodel import shipped
from ds_minimodel.config import AdaptConfig, ConfigError, load_config
from ds_minimodel.errors import UserError
from ds_minimodel.subprocess_runner import child_env

PIPELINE_KINDS = ("demo", "languages", "pretrained")


def spec_path(name: str, home: str) -> Path:
    """`quick` -> `<home>/quick.yaml`; a path (with a / or a .yaml) is taken as given. The
    package's copy when no such file is here."""
    path = Path(name) if ("/" in name or name.endswith((".yaml", ".yml"))) else Path(home) / f"{name}.yaml"
    found = shipped.find(path)
    if not found.is_file():
        raise ConfigError(f"spec {name}: no file {path}")
    return found


# --------------------------------------------------------------------------------------------
# Pipelines


@dataclass
class PipelineSteps:
    """Training steps of each of the pipeline's stages."""
    pretrain: int = 400
    minipost: int = 150
    adapt: int = 600
    finetune: int = 300
    # kind pretrained, a checkpoint without an MLM head: the standard baseline's head (None: minipost's).
    head: Optional[int] = None


@dataclass
class PipelineSpec:
    # One line: what the pipeline is for (printed by --plan).
    description: str = ""
    # "demo": our own English models (MiniJoint, and the regular twin unless regular is false);
    # "languages": the demo's models adapted to many target languages at once; "pretrained": a
    # real pretrained checkpoint (source) through MiniPost and the standard baseline.
    kind: str = "demo"
    work: str = "runs/pipeline"
    data_root: str = "data"
    # Processes of the pretraining launch (DeepSpeed ranks).
    nproc: int = 2
    # Finished pretraining runs to start from: the first with final/model.pt is reused (none: train).
    reuse_pretrain: list[str] = field(default_factory=list)
    # The command that makes reuse_pretrain's run when the pipeline must not pretrain one itself
    # (its body has a recipe of its own, e.g. make body): without such a run it refuses to start.
    reuse_built_by: Optional[str] = None
    steps: PipelineSteps = field(default_factory=PipelineSteps)
    # kind demo: both models' pretraining YAML (the MiniJoint one sets model.mini_depth) and MiniPost's.
    pretrain_config: str = "configs/pretrain-demo.yaml"
    minipost_config: str = "configs/minipost-demo.yaml"
    # kind demo: the English and target corpora's recipes (data_root/<recipe>).
    english_recipe: str = "bible-en"
    target_recipe: str = "bible-ny"
    # kind demo: only what a study needs (pretraining, MiniPost, fine-tuning).
    models_only: bool = False
    # kind demo: also the regular model (no mid head) that the standard baseline and MiniPost adapt from.
    regular: bool = True
    # kind languages: codes of the language table, or [default] for ten of them.
    languages: list[str] = field(default_factory=list)
    language_vocab: int = 8000
    # kind pretrained: "minilm" (the packaged all-MiniLM-L6-v2) or a Hugging Face model directory.
    source: Optional[str] = None
    # kind pretrained: MiniPost's mini-model depth (None: L/4) and its trained top layers.
    mini_depth: Optional[int] = None
    top_layers: int = 1
    retrieval_pairs: int = 1000
    # Config overrides per step, e.g. {adapt: [data.seq_len=64]} (adapt reaches every method).
    set: dict[str, list[str]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        if self.kind not in PIPELINE_KINDS:
            out.append(f"kind must be one of {', '.join(PIPELINE_KINDS)}, got {self.kind!r}")
        for name in ("pretrain", "minipost", "adapt", "finetune", "head"):
            value = getattr(self.steps, name)
            if value is not None and value < 1:
                out.append(f"steps.{name} must be positive, got {value}")
        if self.nproc < 1:
            out.append(f"nproc must be >= 1, got {self.nproc}")
        misplaced = {"languages": (bool(self.languages), "languages"),
                     "source": (self.source is not None, "pretrained"),
                     "mini_depth": (self.mini_depth is not None, "pretrained"),
                     "models_only": (self.models_only, "demo"), "regular": (not self.regular, "demo"),
                     "english_recipe": (self.english_recipe != "bible-en", "demo"),
                     "target_recipe": (self.target_recipe != "bible-ny", "demo")}
        out += [f"{key} applies to kind {kind}, not {self.kind}"
                for key, (given, kind) in misplaced.items() if given and kind != self.kind]
        if self.kind == "languages" and not self.languages:
            out.append("kind languages needs languages (codes of the table, or [default])")
        if self.kind == "pretrained" and self.source is None:
            out.append("kind pretrained needs source (minilm or a Hugging Face model directory)")
        return out


def load_pipeline_spec(name: str, overrides: list[str] | None = None) -> PipelineSpec:
    return load_config(PipelineSpec, spec_path(name, "studies/pipelines"), overrides)


def reused_pretrain(spec: PipelineSpec) -> str | None:
    """The first of spec.reuse_pretrain that is a finished run."""
    return next((d for d in spec.reuse_pretrain if (Path(d) / "final" / "model.pt").is_file()), None)


def pipeline_argv(spec: PipelineSpec) -> list[str]:
    """The `launchers/pipeline.py` arguments the spec stands for."""
    s = spec.steps
    argv = ["--work", spec.work, "--data-root", spec.data_root, "--nproc", str(spec.nproc),
            "--minipost-steps", str(s.minipost), "--adapt-steps", str(s.adapt), "--finetune-steps", str(s.finetune),
            "--retrieval-pairs", str(spec.retrieval_pairs)]
    reuse = reused_pretrain(spec)
    if reuse:
        argv += ["--reuse-pretrain", reuse]
    if spec.kind == "pretrained":
        argv += ["--from-pretrained", spec.source, "--top-layers", str(spec.top_layers)]
        argv += ["--k", str(spec.mini_depth)] if spec.mini_depth is not None else []
        argv += ["--head-steps", str(s.head)] if s.head is not None else []
    else:
        argv += ["--pretrain-steps", str(s.pretrain)]
    if spec.kind == "demo":
        argv += ["--pretrain-config", spec.pretrain_config, "--minipost-config", spec.minipost_config,
                 "--english-recipe", spec.english_recipe, "--target-recipe", spec.target_recipe]
        argv += ["--models-only"] if spec.models_only else []
        argv += [] if spec.regular else ["--no-regular"]
    if spec.kind == "languages":
        argv += ["--languages", ",".join(spec.languages), "--language-vocab", str(spec.language_vocab)]
    for step, items in spec.set.items():
        argv += [a for item in items for a in ("--set", f"{step}:{item}")]
    return argv


# --------------------------------------------------------------------------------------------
# Studies


@dataclass
class StudyModels:
    """The models the study adapts from and scores through (a pipeline's final/ directories)."""
    # MiniJoint's source, and every method's when baseline_pretrained is not given.
    pretrained: str = ""
    # The standard baseline's source: the paper's regular model (no mid head).
    baseline_pretrained: Optional[str] = None
    # MiniPost's model (needed by the minipost methods).
    minipost: Optional[str] = None
    # The fine-tuned classifiers packs are scored through (each pack through the one made for its body).
    classifiers: list[str] = field(default_factory=list)


@dataclass
class StudyLanguage:
    """One target language: its data directory, made by prepare_data --recipe when missing."""
    code: str = ""
    data: Optional[str] = None
    recipe: Optional[str] = None
    vocab_size: int = 8000
    # "hard" (exactly vocab_size pieces) or "soft" (at most: for a small alphabet's corpus).
    vocab_limit: str = "hard"
    # More prepare_data arguments, e.g. [--known-rows-from, data/bible-en-body] for a cipher language.
    prepare_args: list[str] = field(default_factory=list)


@dataclass
class StudyMetrics:
    """What is scored at each checkpoint, and how the ratio is read off the curves."""
    # accuracy, agreement (with the classifier's English answers) or retrieval_top1.
    metric: str = "accuracy"
    # Target = fraction x the baseline's final metric.
    fraction: float = 1.0
    baseline_at: str = "crossing"
    fit: str = "isotonic"
    # A fixed seeded subset of the test set (None: all of it), and its seed.
    eval_examples: Optional[int] = None
    eval_seed: int = 0
    retrieval_pairs: int = 1000
    # The full model's MLM loss as the second metric, on this many validation sequences.
    loss: bool = True
    loss_sequences: int = 128
    # The initial embeddings scored as a point at 0 FLOPs.
    init_point: bool = True
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    # No ratio without transfer: the bodies passed their gate and the baseline beat its control.
    require_transfer: bool = False


@dataclass
class StudyAdapt:
    """Every adaptation run's config."""
    config: str = "configs/adapt-demo.yaml"
    deepspeed: str = "ds_configs/z0.json"
    # adapt.init of every method without its own (METHOD+INIT).
    init: str = "random"
    # Extra config overrides for every run, e.g. [data.seq_len=64].
    set: list[str] = field(default_factory=list)
    # Learning rates of the pilot (study/lr_pilot.py), e.g. [1.0e-3, 3.0e-3, 1.0e-2]: each method's
    # runs train with the rate its short pilot chose, by one rule for all; empty: the config's optim.lr.
    lr_grid: list[float] = field(default_factory=list)
    # Steps of each method's pilot runs, e.g. {full: 50, minijoint: 150} (default: a quarter of its steps).
    pilot_steps: dict[str, int] = field(default_factory=dict)


@dataclass
class StudySweep:
    """The k x vocabulary frontier at a fixed depth instead of the methods' curves."""
    k: list[int] = field(default_factory=list)
    vocab: list[int] = field(default_factory=list)
    # What each MiniPost top layer trains on.
    english_data: str = "data/bible-en"
    minipost_config: str = "configs/minipost-demo.yaml"
    # Each k's FLOP budget as a multiple of the baseline's (without steps.mini).
    budget: float = 1.0
    # A study out directory whose study.json and study.md get the sweep table.
    into_study: Optional[str] = None


@dataclass
class StudySpec:
    # One line: what the study shows (printed by --plan).
    description: str = ""
    # A pipeline spec run first to build the models (its finished steps are reused).
    pipeline: Optional[str] = None
    # Or, when the models come from elsewhere: the command that builds them (named in the error).
    built_by: Optional[str] = None
    models: StudyModels = field(default_factory=StudyModels)
    languages: list[StudyLanguage] = field(default_factory=list)
    # Methods (full, minijoint, minipost, each optionally +INIT, e.g. minipost+focus); full is the baseline.
    methods: list[str] = field(default_factory=lambda: ["full", "minijoint", "minipost"])
    # Adaptation steps per method (a sweep: full, and optionally mini).
    steps: dict[str, int] = field(default_factory=dict)
    seeds: int = 3
    checkpoints: int = 10
    adapt: StudyAdapt = field(default_factory=StudyAdapt)
    metrics: StudyMetrics = field(default_factory=StudyMetrics)
    sweep: Optional[StudySweep] = None
    out: str = "runs/study"
    # Languages studied at once, each with its share of the cores (OMP_NUM_THREADS = cores / jobs)
    # and its output in out/logs/<code>.log. Whether that beats one language after the other with
    # every core depends on how well a step uses threads (bench/study_jobs.py measures it).
    # Wall-clock figures inside each study are then measured beside the other's load.
    jobs: int = 1

    def problems(self) -> list[str]:
        from ds_minimodel.study.runs import METHODS, split_method

        out = []
        if not self.models.pretrained:
            out.append("models.pretrained is required")
        if self.metrics.metric in ("accuracy", "agreement") and not self.models.classifiers:
            out.append(f"metric {self.metrics.metric} needs models.classifiers (fine-tuned classifier directories)")
        if not self.languages:
            out.append("languages: give at least one target language")
        for i, lang in enumerate(self.languages):
            if not lang.code:
                out.append(f"languages[{i}].code is required")
            if not (lang.data or lang.recipe):
                out.append(f"languages[{i}] ({lang.code}) needs data (a dataset directory) or recipe (to make one)")
            if lang.vocab_limit not in ("hard", "soft"):
                out.append(f"languages[{i}].vocab_limit must be hard or soft, got {lang.vocab_limit!r}")
        codes = [lang.code for lang in self.languages]
        out += [f"languages lists {c} more than once" for c in sorted(set(codes)) if codes.count(c) > 1]
        if self.jobs < 1:
            out.append(f"jobs must be >= 1, got {self.jobs}")
        if self.seeds < 1 or self.checkpoints < 1:
            out.append(f"seeds and checkpoints must be >= 1, got {self.seeds} and {self.checkpoints}")
        out += [f"steps.{m} must be positive, got {n}" for m, n in self.steps.items() if n < 1]
        m = self.metrics
        for key, value, allowed in (("metric", m.metric, ("accuracy", "agreement", "retrieval_top1")),
                                    ("baseline_at", m.baseline_at, ("crossing", "final")),
                                    ("fit", m.fit, ("isotonic", "raw"))):
            if value not in allowed:
                out.append(f"metrics.{key} must be one of {', '.join(allowed)}, got {value!r}")
        if m.bootstrap < 1 or m.loss_sequences < 1:
            out.append("metrics.bootstrap and metrics.loss_sequences must be >= 1")
        if not 0.0 < m.fraction <= 1.5:
            out.append(f"metrics.fraction must be in (0, 1.5], got {m.fraction}")
        if self.sweep is None:
            bad = [x for x in self.methods if split_method(x)[0] not in METHODS]
            out += [f"unknown method {x} (choose from {', '.join(METHODS)}, each optionally +INIT)" for x in bad]
            if "full" not in self.methods:
                out.append("methods must include full (the baseline)")
            # A method's steps may stay when an override drops the method; a name no method has is a typo.
            out += [f"steps names {k}, which is no method" for k in self.steps if split_method(k)[0] not in METHODS]
            if any(split_method(x)[0] == "minipost" for x in self.methods) and not self.models.minipost:
                out.append("method minipost needs models.minipost")
        else:
            if len(self.languages) != 1 or not self.languages[0].recipe:
                out.append("a sweep takes one language with a recipe (one tokenizer per vocabulary is made from it)")
            if not (self.sweep.k and self.sweep.vocab):
                out.append("sweep.k and sweep.vocab must each list at least one value")
            out += [f"steps names {k}; a sweep takes full and mini" for k in self.steps if k not in ("full", "mini")]
        out += self._pilot_problems()
        if self.pipeline and self.built_by:
            out.append("give pipeline (run first) or built_by (the models come from elsewhere), not both")
        return out

    def _pilot_problems(self) -> list[str]:
        from ds_minimodel.study.runs import METHODS, split_method

        a = self.adapt
        out = [f"adapt.lr_grid: learning rates must be positive, got {lr}" for lr in a.lr_grid if lr <= 0]
        out += [f"adapt.lr_grid lists {lr} more than once" for lr in sorted(set(a.lr_grid)) if a.lr_grid.count(lr) > 1]
        out += [f"adapt.pilot_steps.{m} must be positive, got {n}" for m, n in a.pilot_steps.items() if n < 1]
        out += [f"adapt.pilot_steps names {m}, which is no method" for m in a.pilot_steps
                if split_method(m)[0] not in METHODS]
        if a.pilot_steps and not a.lr_grid:
            out.append("adapt.pilot_steps needs adapt.lr_grid (the rates the pilot tries)")
        if a.lr_grid and any(item.split("=", 1)[0].strip() == "optim.lr" for item in a.set):
            out.append("adapt.set gives optim.lr and adapt.lr_grid asks the pilot to choose it: give one or the other")
        if a.lr_grid and self.sweep is not None:
            out.append("adapt.lr_grid: a sweep has no learning-rate pilot")
        return out


def load_study_spec(name: str, overrides: list[str] | None = None) -> StudySpec:
    spec = load_config(StudySpec, spec_path(name, "studies"), overrides)
    # Every adaptation run's config as adapt.py will load it: a misspelt key in adapt.set fails now.
    load_config(AdaptConfig, shipped.find(spec.adapt.config), spec.adapt.set)
    if spec.pipeline:
        load_pipeline_spec(spec.pipeline)
    return spec


@dataclass
class Command:
    """One command a spec runs: its name, its arguments, and when it is already done (skipped)."""
    name: str
    cmd: list[str]
    done: Optional[Path] = None
    # The language it belongs to: with jobs > 1 each language's commands run in order, beside the
    # other languages', their output in `log`.
    lane: Optional[str] = None
    log: Optional[Path] = None


def _module(step: str, *args) -> list[str]:
    return [sys.executable, "-m", f"ds_minimodel.cli.{step}", *map(str, args)]


def _study_dir(spec: StudySpec, lang: StudyLanguage) -> Path:
    return Path(spec.out) / lang.code if len(spec.languages) > 1 else Path(spec.out)


def _data_dir(spec: StudySpec, lang: StudyLanguage) -> Path:
    return Path(lang.data) if lang.data else Path("data") / f"{lang.recipe}-v{lang.vocab_size}"


def study_argv(spec: StudySpec, lang: StudyLanguage) -> list[str]:
    """`launchers/study.py` arguments for one language of the spec."""
    m, a, models = spec.metrics, spec.adapt, spec.models
    steps = [f"{k}={n}" for k, n in spec.steps.items()]
    common = ["--pretrained", models.pretrained, "--out", str(_study_dir(spec, lang)),
              "--seeds", str(spec.seeds), "--checkpoints", str(spec.checkpoints), "--config", a.config,
              "--metric", m.metric, "--fraction", str(m.fraction), "--baseline-at", m.baseline_at, "--fit", m.fit,
              "--retrieval-pairs", str(m.retrieval_pairs), "--seed", str(m.eval_seed),
              "--loss-sequences", str(m.loss_sequences), "--bootstrap", str(m.bootstrap),
              "--bootstrap-seed", str(m.bootstrap_seed)]
    common += ["--model", *models.classifiers] if models.classifiers else []
    common += ["--eval-examples", str(m.eval_examples)] if m.eval_examples is not None else []
    common += [] if m.loss else ["--no-loss"]
    common += [] if m.init_point else ["--no-init-point"]
    common += ["--require-transfer"] if m.require_transfer else []
    common += ["--steps", *steps] if steps else []
    overrides = [f"adapt.language={lang.code}", *a.set]
    if spec.sweep is not None:
        sw = spec.sweep
        return ["--sweep", f"k={','.join(map(str, sw.k))}", f"vocab={','.join(map(str, sw.vocab))}", *common,
                "--english-data", sw.english_data, "--target-recipe", lang.recipe,
                "--minipost-config", sw.minipost_config, "--budget", str(sw.budget),
                *(["--into-study", sw.into_study] if sw.into_study else []), "--set", *overrides]
    argv = ["--run-experiments", *common, "--target-data", str(_data_dir(spec, lang)), "--methods", *spec.methods,
            "--init", a.init, "--deepspeed", a.deepspeed, "--set", *overrides]
    argv += ["--baseline-pretrained", models.baseline_pretrained] if models.baseline_pretrained else []
    argv += ["--minipost", models.minipost] if models.minipost else []
    argv += ["--lr-grid", *map(str, a.lr_grid)] if a.lr_grid else []
    argv += ["--pilot-steps", *(f"{m}={n}" for m, n in a.pilot_steps.items())] if a.pilot_steps else []
    return argv


def study_commands(spec: StudySpec) -> list[Command]:
    commands = []
    if spec.pipeline:
        commands.append(Command("pipeline", _module("pipeline", "--spec", spec.pipeline)))
    for lang in spec.languages:
        data, lane = _data_dir(spec, lang), {"lane": lang.code, "log": Path(spec.out) / "logs" / f"{lang.code}.log"}
        if lang.recipe and spec.sweep is None:
            # A given tokenizer (e.g. the ciphered source's: --cipher-tokenizer) has its own vocabulary.
            given = {"--cipher-tokenizer", "--tokenizer"} & set(lang.prepare_args)
            vocab = [] if given else ["--vocab-size", lang.vocab_size, "--vocab-limit", lang.vocab_limit]
            commands.append(Command(f"data-{lang.code}", _module(
                "prepare_data", "--recipe", lang.recipe, "--out", data, *vocab, *lang.prepare_args),
                done=data / "index.json", **lane))
        commands.append(Command(f"study-{lang.code}", _module("study", *study_argv(spec, lang)), **lane))
    if len(spec.languages) > 1:
        commands.append(Command("average", _module("study", "--average",
                                                   *(_study_dir(spec, lang) for lang in spec.languages),
                                                   "--out", spec.out)))
    return commands


def missing_models(spec: StudySpec) -> list[str]:
    m = spec.models
    dirs = [m.pretrained, m.baseline_pretrained, m.minipost, *m.classifiers]
    return [d for d in dirs if d and not Path(d).is_dir()]


def missing_data(spec: StudySpec) -> list[str]:
    """Languages' data directories that are neither there nor made by a recipe."""
    return [str(_data_dir(spec, lang)) for lang in spec.languages
            if not lang.recipe and not (_data_dir(spec, lang) / "index.json").is_file()]


def run_commands(commands: list[Command], jobs: int = 1) -> None:
    """Each command in this process's Python and working directory. With jobs == 1 one after the
    other, their output on the console; with jobs > 1 the languages' commands (those with a lane)
    `jobs` languages at a time, each language's in order and its output in its log, and the
    commands without a lane (the pipeline before, the average after) alone."""
    env = child_env()
    if jobs <= 1:
        for c in commands:
            _run_one(c, env)
        return
    i = 0
    while i < len(commands):
        if commands[i].lane is None:
            _run_one(commands[i], env)
            i += 1
            continue
        j = next((k for k in range(i, len(commands)) if commands[k].lane is None), len(commands))
        _run_lanes(commands[i:j], jobs, env)
        i = j


def _run_one(c: Command, env: dict) -> None:
    if c.done is not None and c.done.exists():
        print(f"[{c.name}] done: {c.done} exists", flush=True)
        return
    print(f"[{c.name}] $ {' '.join(map(str, c.cmd))}", flush=True)
    code = subprocess.run(c.cmd, env=env).returncode
    if code != 0:
        raise UserError(f"[{c.name}] exited {code}; the spec stops here (run it again to go on)")


def _run_lanes(commands: list[Command], jobs: int, env: dict) -> None:
    """Languages side by side, `jobs` at a time; a language stops at its first failure, the others
    go on, and the failures are reported together once all have stopped."""
    from concurrent.futures import ThreadPoolExecutor

    lanes: dict[str, list[Command]] = {}
    for c in commands:
        lanes.setdefault(c.lane, []).append(c)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    lane_env = {**env, "OMP_NUM_THREADS": threads}

    def run_lane(lane: list[Command]) -> Optional[str]:
        for c in lane:
            if c.done is not None and c.done.exists():
                print(f"[{c.name}] done: {c.done} exists", flush=True)
                continue
            c.log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{c.name}] $ {' '.join(map(str, c.cmd))}  (log: {c.log}, {threads} threads)", flush=True)
            t0 = time.perf_counter()
            with open(c.log, "a", encoding="utf-8") as f:
                f.write(f"[{c.name}] $ {' '.join(map(str, c.cmd))}\n")
                f.flush()
                code = subprocess.run(c.cmd, env=lane_env, stdout=f, stderr=subprocess.STDOUT).returncode
            seconds = time.perf_counter() - t0
            if code != 0:
                tail = c.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
                return f"[{c.name}] exited {code} after {seconds:.0f} s (log {c.log}: {' '.join(tail)})"
            print(f"[{c.name}] finished in {seconds:.0f} s", flush=True)
        return None

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failures = [f for f in pool.map(run_lane, lanes.values()) if f]
    if failures:
        raise UserError(f"{'; '.join(failures)}; the spec stops here (run it again to go on)")


def print_plan(description: str, commands: list[Command]) -> None:
    if description:
        print(f"# {description}")
    for c in commands:
        skip = f"  # done: {c.done} exists" if c.done is not None and c.done.exists() else ""
        print(f"[{c.name}] {' '.join(c.cmd)}{skip}")
