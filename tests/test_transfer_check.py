"""No ratio without transfer (study/transfer_check.py): hand-made gates and gains; the summary's
last line when the check is required and fails; the gain bootstrap.py reports."""

import json

import numpy as np
import pytest

from ds_minimodel.study import transfer_check
from ds_minimodel.study.bootstrap import MethodScores, bootstrap_ratios
from ds_minimodel.study.render import summary_lines

PASSED = {"nats": 1.0, "passed": True, "final_head_below_unigram_nats": 2.53}
FAILED = {"nats": 1.0, "passed": False, "final_head_below_unigram_nats": 0.21}
GAIN = {"point": 0.30, "interval": [0.22, 0.37], "first": 0.20, "final": 0.50}


def test_passes_only_with_gated_bodies_and_a_gain_whose_interval_is_above_zero():
    assert transfer_check.check({"runs/body/final": PASSED}, GAIN, "agreement", True)["passed"]
    cases = {
        "has no body.json": ({"runs/x/final": None}, GAIN, True),
        "0.21 nats below unigram, under the gate's 1.0": ({"runs/x/final": FAILED}, GAIN, True),
        "a gain of +0.0300 (95% interval -0.0100 to +0.0700": (
            {"b": PASSED}, {"point": 0.03, "interval": [-0.01, 0.07], "first": 0.2, "final": 0.23}, True),
        "were not scored (--no-init-point)": ({"b": PASSED}, GAIN, False),
    }
    for why, (gates, gain, init) in cases.items():
        result = transfer_check.check(gates, gain, "agreement", init)
        assert not result["passed"] and why in result["why"], (why, result["why"])
    # Both conditions failing: both named, in one line.
    both = transfer_check.check({"a": FAILED}, {"point": -0.01, "interval": [-0.05, 0.02], "first": 0.3,
                                                "final": 0.29}, "agreement", True)
    assert "under the gate" in both["why"] and "did not transfer" in both["why"] and "\n" not in both["why"]


def test_gates_are_read_from_body_json(tmp_path):
    (tmp_path / "body").mkdir()
    (tmp_path / "body" / "body.json").write_text(json.dumps({"gate": PASSED}))
    gates = transfer_check.body_gates([str(tmp_path / "body"), str(tmp_path / "body"), str(tmp_path / "none")])
    assert gates == {str(tmp_path / "body"): PASSED, str(tmp_path / "none"): None}


def _result(required: bool, passed: bool) -> dict:
    entry = {"outcome": "ratio", "ratio": 2.0, "interval": [1.5, 2.5], "n": 100, "replicates": 100}
    return {"level": 0.95, "metric": "agreement", "metrics": {}, "summary": {"minijoint": {"agreement": entry}},
            "transfer_check": {"required": required, "passed": passed, "why": "the standard baseline did not "
                               "transfer: ..."}}


def test_the_summary_ends_with_the_reason_instead_of_ratios_when_required():
    assert summary_lines(_result(True, False))[-1] == \
        "study: no compute ratio: the standard baseline did not transfer: ..."
    assert summary_lines(_result(False, False))[-1].startswith("study minijoint: compute ratio 2.00")
    assert summary_lines(_result(True, True))[-1].startswith("study minijoint: compute ratio 2.00")


def test_bootstrap_reports_the_baselines_gain_from_its_first_to_its_last_point():
    # Two seeds, three points, two units each; the baseline's curve per seed: 0.25 -> 0.5 -> 0.75 and
    # 0.25 -> 0.5 -> 1.0 (each unit's num / den), so the seed mean goes 0.25 -> 0.875.
    num = np.array([[[0, 1], [1, 1], [1, 2]], [[1, 0], [1, 1], [2, 2]]], dtype=float)
    den = np.full_like(num, 2.0)
    flops = np.tile([0.0, 1.0, 2.0], (2, 1))
    scores = {name: MethodScores([0, 1], ["init", "a", "b"], np.array([0, 1, 2]), flops, flops.copy(), num, den)
              for name in ("full", "minijoint")}
    boot = bootstrap_ratios(scores, replicates=200, seed=1)
    gain = boot["baseline_gain"]
    assert gain["first"] == pytest.approx(0.25) and gain["final"] == pytest.approx(0.875)
    assert gain["point"] == pytest.approx(0.625)
    lo, hi = gain["interval"]
    # Every replicate's gain lies between the smallest and largest a draw of seeds and units can give.
    assert 0.25 <= lo <= 0.625 <= hi <= 1.0
    lower = bootstrap_ratios(scores, replicates=200, seed=1, better="lower")["baseline_gain"]
    assert lower["point"] == pytest.approx(-0.625)
