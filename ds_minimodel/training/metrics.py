"""Run logging: rank-0 progress bar, `metrics.jsonl` always, Weights & Biases when asked."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from ds_minimodel.training.run_lock import check_owner


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Appends one JSON object per record to `<run>/metrics.jsonl` (rank 0 only).

    Every record has `kind` ("train", "eval", ...), `step` and a wall-clock `time`; a resumed
    run appends to the same file, so the log of a resumed run reads like an uninterrupted one
    (records past the resume step from the interrupted attempt are dropped on resume).
    Each write first checks that this process still owns the run directory, where it holds its
    lock (run_lock.check_owner: an owner taken over while frozen writes no further line).
    """

    def __init__(self, run_dir: str | Path, *, is_main: bool, total_steps: int, start_step: int = 0,
                 progress: bool = True, wandb_project: str | None = None, run_config: dict | None = None):
        self.is_main = is_main
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        self.wandb = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, dir=str(self.path.parent), config=run_config,
                                    name=self.path.parent.name, resume="allow")

    def _truncate_after(self, step: int) -> None:
        """Drop records of steps > `step` left by an attempt that died after its last checkpoint."""
        if not self.path.exists():
            return
        check_owner(self.path.parent)
        keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def log(self, kind: str, step: int, values: dict) -> None:
        if not self.is_main:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3),
                  **{k: _jsonable(v) for k, v in values.items()}}
        check_owner(self.path.parent)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {f"{kind}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self.wandb is not None and numbers:  # e.g. a "resume" record has none
            self.wandb.log(numbers, step=step)

    def progress(self, step: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(0)

    def write(self, message: str) -> None:
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]
