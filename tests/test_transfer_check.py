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


def test_kappa_units_sum_to_cohens_kappa_on_any_subset():
    from ds_minimodel.study.scoring import Units, kappa_statistic, kappa_units
    from ds_minimodel.tasks.metrics import cohen_kappa

    rng = np.random.default_rng(0)
    english = rng.integers(0, 6, 300)
    target = np.where(rng.random(300) < 0.6, english, rng.integers(0, 6, 300))
    units = Units(kappa_units(target, english, 6), None, kappa_statistic)
    assert units.value == pytest.approx(cohen_kappa(target.tolist(), english.tolist(), 6), abs=1e-12)
    pick = rng.integers(0, 300, 300)  # a bootstrap draw, repeats and all
    drawn = Units(units.num[pick], None, kappa_statistic)
    assert drawn.value == pytest.approx(cohen_kappa(target[pick].tolist(), english[pick].tolist(), 6), abs=1e-12)
    # One class answered whatever the input: kappa 0, however often English answers it too.
    collapsed = Units(kappa_units(np.zeros(300, dtype=int), english, 6), None, kappa_statistic)
    assert collapsed.value == pytest.approx(0.0, abs=1e-12)


def test_a_statistic_metric_goes_through_the_bootstrap():
    from ds_minimodel.study.scoring import kappa_statistic, kappa_units

    rng = np.random.default_rng(1)
    english = rng.integers(0, 3, 40)

    def curve(p_right):
        return [kappa_units(np.where(rng.random(40) < p, english, rng.integers(0, 3, 40)), english, 3) for p in p_right]

    scores = {}
    for name, ps in (("full", (0.0, 0.5, 0.9)), ("minijoint", (0.0, 0.7, 0.95))):
        num = np.stack([np.stack(curve(ps)) for _ in range(2)])  # [S=2, P=3, N=40, C=7]
        flops = np.tile([0.0, 1.0, 2.0], (2, 1)) * (1.0 if name == "full" else 0.4)
        scores[name] = MethodScores([0, 1], ["init", "a", "b"], np.array([0, 1, 2]), flops, flops.copy(), num,
                                    np.ones(num.shape[:3]), kappa_statistic)
    boot = bootstrap_ratios(scores, replicates=100, seed=0)
    assert boot["baseline_gain"]["point"] > 0.5
    assert boot["methods"]["minijoint"]["undefined"] < 100
