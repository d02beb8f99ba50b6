"""Has a pretrained body learned its language? Its validation MLM loss against the unigram baseline
of the same split (data/unigram.py), per head, over the run, and the gate a study applies.

Why a gate: embeddings for a new language are learned by backpropagating through the frozen body.
A body whose loss sits at the unigram cross-entropy predicts from token frequencies alone; it
passes the new rows almost no gradient that depends on context, and nothing it "knows" can
carry a language across. A compute ratio measured over such a body compares noise. A study
therefore refuses to print a ratio over a body less than GATE_NATS below unigram (final head).

`body.json` (written beside the run's metrics and into its final/ model directory, where a study
finds it) records the baseline, every evaluated step's distance per head, and the verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ds_minimodel.config import read_json_object
from ds_minimodel.data.unigram import unigram_baseline
from ds_minimodel.errors import MissingFileError, UserError
from ds_minimodel.training.checkpoint import write_atomic
from ds_minimodel.training.metrics import read_metrics

GATE_NATS = 1.0  # the final head's validation loss must lie at least this far below unigram
GOAL_NATS = 1.5  # what a body should reach (issue 25); reported, not enforced
BODY_FILE = "body.json"
HEADS = {"valid_final_loss": "final", "valid_mid_loss": "mid"}


def _evals(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} has no metrics.jsonl: not a training run directory")
    evals = [r for r in read_metrics(run_dir, "eval") if any(k in r for k in HEADS)]
    if not evals:
        raise UserError(f"{run_dir}/metrics.jsonl has no validation MLM loss (valid_final_loss)")
    return evals


def body_report(run_dir: str | Path, data_path: str | None = None) -> dict:
    """The run's distance below unigram at every evaluation, per head, and the gate's verdict.
    `data_path` defaults to the run's own data.path (config.yaml)."""
    run_dir = Path(run_dir)
    if data_path is None:
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise MissingFileError(f"{run_dir} has no config.yaml: pass the data directory explicitly")
        data_path = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))["data"]["path"]
    base = unigram_baseline(data_path)
    curve = []
    for r in _evals(run_dir):
        point = {"step": r["step"], "flops": r.get("flops"), "train_seconds": r.get("train_seconds")}
        for key, head in HEADS.items():
            if key in r:
                point[head] = {"loss": r[key], "below_unigram": base.distance(r[key])}
        curve.append(point)
    last = curve[-1]
    below = last["final"]["below_unigram"]["nats_per_token"]
    return {"data": str(data_path), "unigram": base.as_dict(), "curve": curve, "final": last,
            "gate": {"nats": GATE_NATS, "goal_nats": GOAL_NATS, "passed": below >= GATE_NATS,
                     "final_head_below_unigram_nats": below}}


def write_body_report(run_dir: str | Path, data_path: str | None = None) -> dict:
    """body_report, written to <run>/body.json and, when the run has one, <run>/final/body.json."""
    report = body_report(run_dir, data_path)
    text = json.dumps(report, indent=1)
    for d in (Path(run_dir), Path(run_dir) / "final"):
        if d.is_dir():
            write_atomic(d / BODY_FILE, text)
    return report


def report_lines(report: dict) -> list[str]:
    u = report["unigram"]
    lines = [f"unigram cross-entropy of {report['data']} ({u['split']}, {u['tokens']:,} tokens): "
             f"{u['nats_per_token']:.3f} nats/token = {u['bits_per_char']:.3f} bits/char"]
    last = report["final"]
    for head in ("final", "mid"):
        if head in last:
            h = last[head]
            lines.append(f"{head:>5} head at step {last['step']}: {h['loss']:.3f} nats/token, "
                         f"{h['below_unigram']['nats_per_token']:.3f} nats/token = "
                         f"{h['below_unigram']['bits_per_char']:.3f} bits/char below unigram")
    g = report["gate"]
    verdict = "passed" if g["passed"] else "FAILED"
    lines.append(f"body gate (final head >= {g['nats']} nats below unigram; goal {g['goal_nats']}): {verdict}")
    return lines


def read_gate(model_dir: str | Path) -> dict | None:
    """The gate recorded for a model directory (its body.json), or None when it was never measured."""
    path = Path(model_dir) / BODY_FILE
    if not path.is_file():
        return None
    return read_json_object(path)["gate"]
