"""The whole pipeline, English -> Chichewa, as one resumable command (`make pipeline`).

Each step runs its real launcher in a subprocess (pretraining under the `deepspeed` launcher on
`nproc` ranks), so the pipeline exercises exactly what users run. A step whose output already
exists is skipped, so an interrupted pipeline continues where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ds_minimodel.errors import UserError

REPO = Path(__file__).resolve().parents[1]
METHODS = ("full", "minijoint", "minipost")


@dataclass
class PipelineOptions:
    work: Path
    data_root: Path
    nproc: int = 2
    reuse_pretrain: Path | None = None
    pretrain_steps: int = 400
    minipost_steps: int = 150
    adapt_steps: int = 300
    finetune_steps: int = 300
    retrieval_pairs: int = 1000
    extra: dict = field(default_factory=dict)  # step -> list of dotlist overrides


def _run(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(REPO)}
    print(f"$ {' '.join(map(str, cmd))}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(list(map(str, cmd)), cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise UserError(f"step failed ({proc.returncode}) after {seconds:.0f} s: {' '.join(map(str, cmd[:3]))} ...; "
                        f"log {log}: {' | '.join(tail)}")
    print(f"  done in {seconds:.0f} s (log: {log})", flush=True)
    return seconds


def run(opts: PipelineOptions) -> Path:
    work = opts.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    timings_file = work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    py = sys.executable

    def step(name: str, done: Path, cmd: list[str]) -> None:
        if done.exists():
            print(f"[{name}] already done ({done})", flush=True)
            return
        print(f"[{name}]", flush=True)
        timings[name] = _run(cmd, work / "logs" / f"{name}.log")
        timings_file.write_text(json.dumps(timings, indent=2))

    en, ny = opts.data_root / "bible-en", opts.data_root / "bible-ny"
    step("data-en", en / "index.json", [py, "launchers/prepare_data.py", "--recipe", "bible-en", "--out", en,
                                        "--vocab-size", "8000"])
    step("data-ny", ny / "index.json", [py, "launchers/prepare_data.py", "--recipe", "bible-ny", "--out", ny,
                                        "--vocab-size", "8000"])
    pretrain = opts.reuse_pretrain or work / "pretrain"
    extra = opts.extra
    step("pretrain", pretrain / "final" / "model.pt",
         [Path(py).parent / "deepspeed", "--num_gpus", opts.nproc, "launchers/pretrain.py",
          "--deepspeed", "ds_configs/z3.json", "--config", "configs/demo-cpu.yaml", f"data.path={en}",
          f"train.out_dir={pretrain}", f"train.steps={opts.pretrain_steps}", *extra.get("pretrain", [])])
    step("minipost", work / "minipost" / "final" / "model.pt",
         [py, "launchers/minipost.py", "--deepspeed", "ds_configs/z0.json", "--config", "configs/minipost-cpu.yaml",
          f"source={pretrain / 'final'}", f"data.path={en}", f"train.out_dir={work / 'minipost'}",
          f"train.steps={opts.minipost_steps}", *extra.get("minipost", [])])
    sources = {"full": (pretrain / "final", "full"), "minijoint": (pretrain / "final", "mini"),
               "minipost": (work / "minipost" / "final", "mini")}
    for method in METHODS:
        model_dir, through = sources[method]
        out = work / f"adapt-{method}"
        step(f"adapt-{method}", out / "pack" / "pack.json",
             [py, "launchers/adapt.py", "--deepspeed", "ds_configs/z0.json", "--config", "configs/adapt-cpu.yaml",
              f"model_dir={model_dir}", f"through={through}", f"data.path={ny}", f"train.out_dir={out}",
              f"train.steps={opts.adapt_steps}", *extra.get("adapt", [])])
    step("finetune", work / "finetune" / "final" / "model.pt",
         [py, "launchers/finetune.py", "--deepspeed", "ds_configs/z0.json", "--config", "configs/finetune-cpu.yaml",
          f"model_dir={pretrain / 'final'}", f"train.out_dir={work / 'finetune'}",
          f"train.steps={opts.finetune_steps}", *extra.get("finetune", [])])
    packs = [a for m in METHODS for a in ("--pack", work / f"adapt-{m}" / "pack")]
    step("evaluate", work / "transfer.json",
         [py, "launchers/evaluate.py", "--model", work / "finetune" / "final", *packs,
          "--pretrained", pretrain / "final", "--retrieval-pairs", opts.retrieval_pairs,
          "--out", work / "transfer.json"])
    from ds_minimodel.report import pipeline_report

    report = pipeline_report(work, pretrain, timings)
    print(f"report: {report}", flush=True)
    return report
