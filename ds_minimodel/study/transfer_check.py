"""No ratio without transfer (issue 25): a study prints compute ratios only where they can mean
something.

Two conditions, checked on what the study measured:
  1. every pretrained body the standard and MiniJoint runs adapt through passed the body gate: its
     final head at least analysis/body.GATE_NATS below the unigram cross-entropy of its validation
     split (the body.json that `make body` writes beside the model; a body never measured fails).
     A MiniPost model is carved from such a body and has no report of its own;
  2. the standard baseline transferred: its gain on the study's metric, from its first point (the
     initial embeddings: the random-embedding control) to its final checkpoint, is above 0 with
     the lower end of its interval above 0 too (bootstrap.py's `baseline_gain`).
A study over a body that has learned no English, or where the baseline itself does not beat its
control, has no ratio to report: matching a method to a baseline that did not transfer measures
nothing. Otherwise the summary ends with one line saying which condition failed, with its numbers.
"""

from __future__ import annotations

from pathlib import Path

from ds_minimodel.analysis.body import read_gate


def body_gates(model_dirs: list[str]) -> dict[str, dict | None]:
    """Each distinct model directory's recorded gate (None: never measured)."""
    return {d: read_gate(d) for d in dict.fromkeys(model_dirs)}


def check(gates: dict[str, dict | None], baseline_gain: dict | None, metric: str, include_init: bool) -> dict:
    """{"passed": bool, "why": the failed conditions in one sentence (or ""), and the numbers}."""
    failed = []
    for model_dir, gate in gates.items():
        if gate is None:
            failed.append(f"body {model_dir} has no body.json (its distance below unigram was never measured: "
                          "launchers/summarize.py writes it)")
        elif not gate.get("passed"):
            failed.append(f"body {model_dir} is {gate.get('final_head_below_unigram_nats', float('nan')):.2f} nats below unigram, under "
                          f"the gate's {gate.get('nats')}")
    if not include_init:
        failed.append("the baseline's initial embeddings were not scored (--no-init-point), so its gain over the "
                      "random-embedding control is unknown")
    elif baseline_gain is not None:
        lo, hi = baseline_gain["interval"]
        if not (baseline_gain["point"] > 0 and lo is not None and lo > 0):
            failed.append(f"the standard baseline did not transfer: {metric} {baseline_gain['first']:.4f} at its "
                          f"random initial embeddings, {baseline_gain['final']:.4f} at its end, a gain of "
                          f"{baseline_gain['point']:+.4f} (95% interval {lo:+.4f} to {hi:+.4f}; it must lie above 0)")
    return {"passed": not failed, "why": "; ".join(failed),
            "body_gates": {str(Path(d)): g for d, g in gates.items()}, "baseline_gain": baseline_gain}
