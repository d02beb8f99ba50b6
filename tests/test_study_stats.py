"""The compute-budget study's statistics on synthetic curves with known answers: the crossing, the
monotone fit, the seed-averaged curves and the bootstrap interval, each against an independent
plain-numpy reference (no toolkit code in the references)."""

import json
import math
import random

import numpy as np
import pytest

from ds_minimodel.errors import UserError
from ds_minimodel.study.bootstrap import (
    MethodScores,
    bootstrap_ratios,
    percentile_interval,
    stack_seeds,
)
from ds_minimodel.study.matching import (
    Point,
    first_crossing,
    isotonic,
    matched_compute,
)
from ds_minimodel.study.scoring import ScoreCache, Units


def curve(*pairs, seconds_per_flop=1e-3):
    """Points from (flops, metric) pairs; step = index + 1, seconds proportional to FLOPs."""
    return [Point(i + 1, f, f * seconds_per_flop, m, f"step_{i + 1}") for i, (f, m) in enumerate(pairs)]


# ---- references -------------------------------------------------------------------------------

def isotonic_reference(y, increasing=True):
    """The isotonic regression's closed form (Barlow et al. 1972): fit[i] = max over j <= i of
    min over k >= i of mean(y[j..k]); O(n^3), no pooling."""
    y = np.asarray(y, dtype=np.float64)
    if not increasing:
        return -isotonic_reference(-y)
    n = len(y)
    return np.array([max(min(y[j:k + 1].mean() for k in range(i, n)) for j in range(i + 1)) for i in range(n)])


def crossing_reference(x, m, target, higher=True):
    """x where the piecewise-linear curve (x, m) first reaches target; None if it never does."""
    hit = np.nonzero(m >= target if higher else m <= target)[0]
    if hit.size == 0:
        return None
    j = hit[0]
    if j == 0:
        return float(x[0])
    return float(x[j - 1] + (target - m[j - 1]) / (m[j] - m[j - 1]) * (x[j] - x[j - 1]))


def ratio_reference(flops, curves, baseline, fraction, higher=True):
    """Each method's ratio at the first crossing of the monotone fits (0: not reached, inf: at 0)."""
    target = fraction * curves[baseline][-1]
    if flops[baseline][0] == 0 and (curves[baseline][0] >= target if higher else curves[baseline][0] <= target):
        return {k: math.nan for k in curves}  # the baseline's raw start meets the target: no ratio at all
    fits = {k: isotonic_reference(v, higher) for k, v in curves.items()}
    base = crossing_reference(flops[baseline], fits[baseline], target, higher)
    out = {}
    for k in curves:
        x = crossing_reference(flops[k], fits[k], target, higher)
        out[k] = math.nan if not base else 0.0 if x is None else math.inf if x == 0 else base / x
    return out


def order_statistics_interval(values, level=0.95):
    v = np.sort(np.asarray(values, dtype=np.float64)[~np.isnan(values)])
    n = len(v)
    return v[math.floor((1 - level) / 2 * (n - 1))], v[math.ceil((1 + level) / 2 * (n - 1))]


def scores(seeds, flops, num, den=None, seconds=None):
    """MethodScores from [S, P, N] arrays; `flops` [P] (every seed alike) or [S, P]."""
    num = np.asarray(num, dtype=np.float64)
    s, p, _ = num.shape
    flops = np.broadcast_to(np.asarray(flops, dtype=np.float64), (s, p)).copy()
    return MethodScores(list(seeds), [f"p{i}" for i in range(p)], np.arange(p), flops,
                        flops * 1e-3 if seconds is None else seconds,
                        num, np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64))


# ---- crossing (raw points) -------------------------------------------------------------------

def test_crossing_between_checkpoints_is_interpolated_linearly():
    pts = curve((100, 0.2), (200, 0.4), (300, 0.6))
    c = first_crossing(pts, 0.5)
    assert c.reached and not c.at_first_point
    assert c.flops == pytest.approx(250.0) and c.seconds == pytest.approx(0.25) and c.step == pytest.approx(2.5)
    assert c.flops_bracket == (200.0, 300.0)
    # Exactly at a checkpoint's value: that checkpoint, not an interpolation.
    assert first_crossing(pts, 0.4).flops == pytest.approx(200.0)


def test_first_crossing_ignores_later_dips_and_earlier_near_misses():
    pts = curve((100, 0.49), (200, 0.3), (300, 0.7), (400, 0.2), (500, 0.9))
    c = first_crossing(pts, 0.5)
    assert c.flops == pytest.approx(200 + (0.2 / 0.4) * 100)  # between 0.3 and 0.7, not 0.49 -> 0.3


def test_lower_is_better_crosses_downwards():
    pts = curve((100, 8.0), (200, 6.0), (300, 5.0))
    assert first_crossing(pts, 5.5, better="lower").flops == pytest.approx(250.0)
    assert first_crossing(pts, 9.0, better="lower").at_first_point
    assert not first_crossing(pts, 4.0, better="lower").reached
    with pytest.raises(UserError, match="better"):
        first_crossing(pts, 5.5, better="up")


def test_first_point_already_at_target_is_an_upper_bound():
    c = first_crossing(curve((100, 0.8), (200, 0.9)), 0.5)
    assert c.reached and c.at_first_point and c.flops == 100 and c.flops_bracket == (100.0, 100.0)


def test_crossing_is_monotone_in_the_target_and_inside_its_bracket():
    rng = random.Random(0)
    for _ in range(50):
        flops = sorted(rng.sample(range(1, 10_000), 8))
        pts = curve(*[(f, rng.random()) for f in flops])
        previous = -math.inf
        for target in [i / 40 for i in range(41)]:
            c = first_crossing(pts, target)
            if not c.reached:
                assert all(p.metric < target for p in pts)
                previous = math.inf
                continue
            assert c.flops >= previous, "a higher target was reached earlier"
            lo, hi = c.flops_bracket
            assert lo <= c.flops <= hi and (c.at_first_point or lo < c.flops)
            previous = c.flops


# ---- monotone fit ----------------------------------------------------------------------------

def test_isotonic_fit_matches_the_closed_form_on_random_curves():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 11, 20):
        for _ in range(20):
            y = rng.normal(size=n).cumsum() * 0.3 + rng.normal(size=n)
            np.testing.assert_allclose(isotonic(y), isotonic_reference(y), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(isotonic(y, increasing=False), isotonic_reference(y, increasing=False),
                                       rtol=1e-12, atol=1e-12)
            assert np.all(np.diff(isotonic(y)) >= 0) and np.all(np.diff(isotonic(y, increasing=False)) <= 0)
    # Ties and plateaus, and a curve that is already monotone is left as it is.
    y = [0.3, 0.3, 0.1, 0.1, 0.5, 0.5, 0.4]
    np.testing.assert_allclose(isotonic(y), isotonic_reference(y), rtol=1e-12, atol=1e-12)
    assert isotonic([0.1, 0.2, 0.2, 0.9]).tolist() == [0.1, 0.2, 0.2, 0.9]


def test_isotonic_fit_agrees_with_sklearn_when_installed():
    sklearn_isotonic = pytest.importorskip("sklearn.isotonic")
    y = np.random.default_rng(1).normal(size=30).cumsum()
    expected = sklearn_isotonic.IsotonicRegression().fit_transform(np.arange(30), y)
    np.testing.assert_allclose(isotonic(y), expected, rtol=1e-10, atol=1e-12)


def test_a_single_lucky_checkpoint_no_longer_decides_the_crossing():
    # Raw first crossing: the spike at 200 FLOPs. On the fit the spike is pooled with the dip after it.
    spiky = curve((100, 0.2), (200, 0.9), (300, 0.3), (400, 0.5), (500, 0.7), (600, 0.8))
    flat = curve((100, 0.2), (200, 0.4), (300, 0.6), (400, 0.8))
    raw = matched_compute({"full": flat, "minijoint": spiky}, fit="raw")
    assert raw["methods"]["minijoint"]["flops_to_target"] == pytest.approx(100 + (0.6 / 0.7) * 100)
    fit = matched_compute({"full": flat, "minijoint": spiky})
    x = np.array([p.flops for p in spiky], dtype=float)
    expected = crossing_reference(x, isotonic_reference([p.metric for p in spiky]), 0.8)
    assert fit["methods"]["minijoint"]["flops_to_target"] == pytest.approx(expected)
    assert expected > 300  # after the dip, not at the spike
    assert fit["methods"]["minijoint"]["fit"] == pytest.approx(isotonic_reference([p.metric for p in spiky]).tolist())


# ---- matched compute on known curves -----------------------------------------------------------

def test_linear_curves_have_the_analytic_ratio():
    # metric = a + b * flops for both methods; the baseline ends at a + b1 * F. Linear interpolation is
    # exact on a line, so the method reaches a + f (b1 F) ... at flops (f (a + b1 F) - a) / b2.
    a, b1, b2, F = 0.3, 1e-3, 2.5e-3, 400.0
    for fraction in (1.0, 0.9, 0.75):
        full = curve(*[(x, a + b1 * x) for x in np.linspace(0, F, 9)][1:])
        mini = curve(*[(x, a + b2 * x) for x in np.linspace(0, F, 17)][1:])
        r = matched_compute({"full": full, "minijoint": mini}, fraction=fraction)
        target = fraction * (a + b1 * F)
        assert r["target"] == pytest.approx(target)
        assert r["methods"]["minijoint"]["flops_to_target"] == pytest.approx((target - a) / b2)
        assert r["methods"]["minijoint"]["ratio_flops"] == pytest.approx(b2 / b1)
        assert r["methods"]["minijoint"]["ratio_value"] == pytest.approx(b2 / b1)
    # The same with a loss that falls linearly (lower is better): ratio b2 / b1 again.
    full = curve(*[(x, 9 - b1 * x) for x in np.linspace(0, F, 9)][1:])
    mini = curve(*[(x, 9 - b2 * x) for x in np.linspace(0, F, 17)][1:])
    r = matched_compute({"full": full, "minijoint": mini}, better="lower")
    assert r["methods"]["minijoint"]["ratio_flops"] == pytest.approx(b2 / b1)


def test_never_reaching_the_target_has_no_ratio():
    curves = {"full": curve((100, 0.3), (200, 0.5), (300, 0.6)),
              "minijoint": curve((30, 0.2), (60, 0.4), (90, 0.55))}
    r = matched_compute(curves, fraction=1.0)
    assert r["target"] == pytest.approx(0.6)
    mj = r["methods"]["minijoint"]
    assert mj["reached"] is False and mj["ratio_flops"] is None and mj["ratio_seconds"] is None
    assert mj["flops_to_target"] is None and "not reached" in mj["note"] and mj["ratio_value"] == 0.0
    json.dumps(r)  # serialisable as is
    # The baseline reaches its own final value at the latest at its last point.
    assert r["methods"]["full"]["reached"] and r["methods"]["full"]["ratio_flops"] == pytest.approx(1.0)


def test_ratio_uses_the_baselines_own_crossing_or_its_whole_run():
    curves = {"full": curve((100, 0.2), (200, 0.6), (300, 0.8), (400, 0.8)),
              "minijoint": curve((20, 0.3), (40, 0.5), (60, 0.7), (80, 0.9))}
    r = matched_compute(curves, fraction=1.0)
    # target 0.8: baseline first reaches it at its 3rd point (300); minijoint between 60 and 80: 70
    assert r["baseline_flops_to_target"] == pytest.approx(300.0)
    mj = r["methods"]["minijoint"]
    assert mj["flops_to_target"] == pytest.approx(70.0) and mj["ratio_flops"] == pytest.approx(300 / 70)
    assert mj["ratio_seconds"] == pytest.approx(300 / 70)
    whole = matched_compute(curves, fraction=1.0, baseline_at="final")
    assert whole["methods"]["minijoint"]["ratio_flops"] == pytest.approx(400 / 70)
    # A smaller fraction: target 0.5 * 0.8 = 0.4; baseline at 100 + (0.2 / 0.4) * 100 = 150, mini at 30.
    half = matched_compute(curves, fraction=0.5)
    assert half["methods"]["minijoint"]["ratio_flops"] == pytest.approx(150 / 30)


def test_a_target_met_at_the_shared_start_gives_no_ratio_in_the_estimate_and_in_every_replicate():
    """Both methods start from the same embeddings (0.5 at 0 FLOPs), which already meet the target
    (the baseline's final 0.5). On the monotone fit the baseline's later dip (0.45) pools its start
    down to 0.475, so it would cross only at 200 FLOPs while minijoint, flat at its start, crosses
    at 0: ratio +inf. The raw start decides instead: no ratio for anyone, on either fit."""
    init = Point(0, 0, 0.0, 0.5, "init")
    curves = {"full": [init] + curve((100, 0.45), (200, 0.5)), "minijoint": [init] + curve((30, 0.6))}
    for fit in ("isotonic", "raw"):
        r = matched_compute(curves, fit=fit)
        for name in ("full", "minijoint"):
            e = r["methods"][name]
            assert e["outcome"] == "met_at_start" and math.isnan(e["ratio_value"]), (fit, name, e)
            assert e["ratio_flops"] is None and "target met at the start" in e["note"], (fit, name, e)
    # Every bootstrap replicate follows the same rule: seeds that all share this start and this dip.
    flat = np.broadcast_to(np.array([0.5, 0.45, 0.5])[None, :, None], (3, 3, 20)).copy()
    methods = {"full": scores([0, 1, 2], [0, 100, 200], flat),
               "minijoint": scores([0, 1, 2], [0, 30, 60], np.broadcast_to(
                   np.array([0.5, 0.6, 0.6])[None, :, None], (3, 3, 20)).copy())}
    got = bootstrap_ratios(methods, replicates=50, seed=0)["methods"]["minijoint"]
    assert got["at_zero_flops"] == 0 and got["undefined"] == 50


def test_a_method_with_its_own_start_that_meets_the_target_reached_it_at_zero_flops():
    """Only where the baseline's start does not meet the target: a method starting elsewhere (its
    own initialisation) that already meets it needs no step-2 compute: ratio +inf, said so."""
    curves = {"full": [Point(0, 0, 0.0, 0.2, "init")] + curve((100, 0.45), (200, 0.5)),
              "minipost+focus": [Point(0, 0, 0.0, 0.55, "init")] + curve((30, 0.6))}
    e = matched_compute(curves)["methods"]["minipost+focus"]
    assert e["outcome"] == "at_zero_flops" and e["ratio_value"] == math.inf and "0 FLOPs" in e["note"]


def test_not_reached_is_a_bound_on_the_ratio():
    """A method that never reaches the target within its budget: its ratio is below the baseline's
    FLOPs to the target over the method's whole budget (it would need more than that budget)."""
    curves = {"full": curve((100, 0.3), (200, 0.5), (300, 0.6)),
              "minijoint": curve((30, 0.2), (60, 0.4), (120, 0.55))}
    e = matched_compute(curves)["methods"]["minijoint"]
    assert e["outcome"] == "not_reached" and e["ratio_bound"] == pytest.approx(300 / 120)
    assert "not reached within 120 FLOPs" in e["note"]


def test_balanced_accuracy_chance_is_one_over_the_number_of_classes():
    """A classifier that answers one class scores 1 / classes in balanced accuracy, whatever the
    class sizes: a balanced test set of 3 classes and sizes {10, 10, 20} both give 1/3."""
    from types import SimpleNamespace

    from ds_minimodel.study.compare import balanced_chance
    from ds_minimodel.study.scoring import AccuracyScorer

    for labels in ([0, 0, 1, 1, 2, 2], [0] * 10 + [1] * 10 + [2] * 20, [5] * 3 + [1] * 7 + [2] * 11 + [0] * 2):
        examples = [SimpleNamespace(label=y) for y in labels]
        stub = SimpleNamespace(task=SimpleNamespace(test_in=lambda language: examples), _subset=lambda ex: ex)
        classes = len(set(labels))
        assert balanced_chance(AccuracyScorer.balanced_weights(stub, "ny")) == pytest.approx(1 / classes), labels


def test_matched_compute_is_deterministic_and_checks_its_input():
    curves = {"full": curve((100, 0.2), (200, 0.6)), "minipost": curve((50, 0.1), (90, 0.7))}
    a = json.dumps(matched_compute(curves, fraction=0.9), sort_keys=True)
    assert a == json.dumps(matched_compute(dict(curves), fraction=0.9), sort_keys=True)
    with pytest.raises(UserError, match="not ordered"):
        matched_compute({"full": curve((200, 0.1), (100, 0.2))})
    with pytest.raises(UserError, match="fraction"):
        matched_compute(curves, fraction=0.0)
    with pytest.raises(UserError, match="baseline 'standard'"):
        matched_compute(curves, baseline="standard")
    with pytest.raises(UserError, match="fit"):
        matched_compute(curves, fit="spline")


# ---- seeds and bootstrap ----------------------------------------------------------------------

def test_seed_averaged_curve_is_the_mean_of_each_seeds_metric():
    rng = np.random.default_rng(3)
    num = rng.integers(0, 2, size=(3, 4, 50))
    m = scores([0, 1, 2], [0, 10, 20, 30], num)
    expected = num.mean(axis=2).mean(axis=0)
    assert [p.metric for p in m.curve()] == pytest.approx(expected.tolist())
    # Token-weighted per seed (a loss: num = summed loss, den = tokens), then a plain mean over seeds.
    den = rng.integers(1, 9, size=(3, 4, 50))
    m = scores([0, 1, 2], [0, 10, 20, 30], num * 2.5, den)
    expected = ((num * 2.5).sum(axis=2) / den.sum(axis=2)).mean(axis=0)
    assert [p.metric for p in m.curve()] == pytest.approx(expected.tolist())


def test_seeds_of_a_method_must_share_checkpoints_and_be_distinct():
    one = np.zeros((2, 5))
    with pytest.raises(UserError, match="seed 1 has checkpoints at steps"):
        stack_seeds("full", [0, 1], [["a", "b"]] * 2, [[0, 5], [0, 6]], [[0, 50], [0, 60]], [[0, 1]] * 2,
                    [one, one], [one + 1, one + 1])
    with pytest.raises(UserError, match="more than once"):
        stack_seeds("full", [0, 0], [["a", "b"]] * 2, [[0, 5]] * 2, [[0, 50]] * 2, [[0, 1]] * 2, [one, one],
                    [one + 1, one + 1])
    # FLOPs and seconds at a shared step may differ between seeds: the curve takes their mean.
    m = stack_seeds("full", [0, 1], [["a", "b"]] * 2, [[0, 5]] * 2, [[0, 50], [0, 52]], [[0, 1.0], [0, 3.0]],
                    [one, one], [one + 1, one + 1])
    assert m.num.shape == (2, 2, 5)
    assert [p.seconds for p in m.curve()] == [0.0, 2.0] and [p.flops for p in m.curve()] == [0.0, 51.0]


def _synthetic_methods(rng, seeds_by_method, n=300, noise=0.03, rate=None):
    """Noisy rising per-example correctness: P(correct) grows with FLOPs, each seed shifted."""
    flops = {"full": np.array([0, 100, 200, 300, 400, 500]), "minijoint": np.array([0, 40, 80, 120, 160, 200]),
             "minipost": np.array([0, 60, 120, 180, 240, 300])}
    rate = rate or {"full": 1 / 500, "minijoint": 1 / 100, "minipost": 1 / 320}
    out = {}
    for name, seeds in seeds_by_method.items():
        p = 0.35 + 0.4 * np.minimum(flops[name] * rate[name], 1.2)[None, :, None]
        shift = rng.normal(0, noise, size=(len(seeds), 1, 1))
        num = (rng.random((len(seeds), len(flops[name]), n)) < np.clip(p + shift, 0, 1)).astype(float)
        # Each seed's FLOPs at a step differ a little (the MLM head counts the masked tokens drawn).
        jitter = 1 + rng.uniform(-0.01, 0.01, size=(len(seeds), len(flops[name])))
        out[name] = scores(seeds, flops[name] * jitter, num)
    return out


def bootstrap_reference(methods, replicates, seed, fraction=1.0, paired=True):
    """The bootstrap written out plainly: one replicate at a time, the same draws in the same order."""
    rng = np.random.default_rng(seed)
    names = list(methods)
    if paired:
        idx = rng.integers(0, len(methods[names[0]].seeds), (replicates, len(methods[names[0]].seeds)))
        seed_idx = {k: idx for k in names}
    else:
        seed_idx = {k: rng.integers(0, len(methods[k].seeds), (replicates, len(methods[k].seeds))) for k in names}
    n = methods[names[0]].num.shape[2]
    unit_idx = rng.integers(0, n, (replicates, n))
    ratios = {k: [] for k in names}
    for b in range(replicates):
        curves = {}
        flops = {}
        for k in names:
            num = methods[k].num[seed_idx[k][b]][:, :, unit_idx[b]]
            den = methods[k].den[seed_idx[k][b]][:, :, unit_idx[b]]
            curves[k] = (num.sum(axis=2) / den.sum(axis=2)).mean(axis=0)
            flops[k] = methods[k].flops[seed_idx[k][b]].mean(axis=0)
        r = ratio_reference(flops, curves, "full", fraction)
        for k in names:
            ratios[k].append(r[k])
    return {k: np.array(v) for k, v in ratios.items()}


@pytest.mark.parametrize("paired", [True, False])
def test_bootstrap_matches_a_plain_numpy_implementation_with_the_same_rng(paired):
    rng = np.random.default_rng(7)
    seeds = {"full": [0, 1, 2], "minijoint": [0, 1, 2], "minipost": [0, 1, 2]} if paired else \
        {"full": [0, 1, 2], "minijoint": [0, 1, 2, 3], "minipost": [5, 6]}
    methods = _synthetic_methods(rng, seeds)
    # fraction 0.9501: no mean of these 0/1 scores equals the target exactly, so no replicate is a
    # tie that the two summation orders could round differently.
    got = bootstrap_ratios(methods, fraction=0.9501, replicates=300, seed=11, interval="percentile")
    expected = bootstrap_reference(methods, 300, 11, fraction=0.9501, paired=paired)
    assert got["seed_resampling"] == ("paired" if paired else "independent")
    for k in methods:
        np.testing.assert_allclose(got["methods"][k]["ratios"], expected[k], rtol=1e-9, atol=1e-12)
        assert got["methods"][k]["interval"] == pytest.approx(list(order_statistics_interval(expected[k])))
    assert got["methods"]["full"]["interval"] == [1.0, 1.0]  # the baseline against itself
    lo, hi = got["methods"]["minijoint"]["interval"]
    assert 1.0 < lo < hi  # the faster-learning method: clearly above 1 on these curves
    # Reproducible: the same seed gives the same replicates, another seed others.
    again = bootstrap_ratios(methods, fraction=0.9501, replicates=300, seed=11)
    assert np.array_equal(again["methods"]["minijoint"]["ratios"], got["methods"]["minijoint"]["ratios"])
    other = bootstrap_ratios(methods, fraction=0.9501, replicates=300, seed=12)
    assert not np.array_equal(other["methods"]["minijoint"]["ratios"], got["methods"]["minijoint"]["ratios"])


def test_bootstrap_without_variance_gives_a_zero_width_interval_at_the_point_estimate():
    # Every seed the same curve, every unit the same score at a checkpoint: every replicate is the data.
    def flat(values, seeds=3, n=25):
        return np.broadcast_to(np.asarray(values, dtype=float)[None, :, None], (seeds, len(values), n)).copy()
    methods = {"full": scores([0, 1, 2], [0, 100, 200, 300], flat([0.2, 0.4, 0.5, 0.6])),
               "minijoint": scores([0, 1, 2], [0, 30, 60, 90], flat([0.2, 0.45, 0.55, 0.65]))}
    point = matched_compute({k: m.curve() for k, m in methods.items()})
    got = bootstrap_ratios(methods, replicates=200, seed=0)
    r = point["methods"]["minijoint"]["ratio_value"]
    assert r == pytest.approx(300 / (60 + (0.05 / 0.1) * 30))
    assert got["methods"]["minijoint"]["interval"] == pytest.approx([r, r])


def test_bootstrap_counts_replicates_that_never_reach_the_target():
    rng = np.random.default_rng(5)
    # Both methods end at the same expected accuracy: in some replicates minijoint falls short.
    # (fraction 0.999: a target that no mean of the 0/1 scores equals exactly, so no replicate is
    # a tie that rounding in one summation order or the other could decide.)
    methods = _synthetic_methods(rng, {"full": [0, 1, 2], "minijoint": [0, 1, 2]},
                                 rate={"full": 1 / 500, "minijoint": 1 / 200})
    got = bootstrap_ratios(methods, fraction=0.999, replicates=200, seed=1,
                           interval="percentile")["methods"]["minijoint"]
    expected = bootstrap_reference(methods, 200, 1, fraction=0.999)["minijoint"]
    assert 0 < got["not_reached"] == int((expected == 0).sum()) < 200
    assert got["interval"] == pytest.approx(list(order_statistics_interval(expected)))


def test_percentile_interval_is_the_order_statistics():
    rng = np.random.default_rng(2)
    for n in (1, 7, 100, 1000):
        v = rng.exponential(size=n)
        assert percentile_interval(v) == pytest.approx(order_statistics_interval(v))
        assert percentile_interval(v, 0.8) == pytest.approx(order_statistics_interval(v, 0.8))
    # Censored values stay ordered (0: not reached, inf: at 0 FLOPs); NaN (undefined) is left out.
    v = np.array([0.0] * 3 + list(np.linspace(1, 2, 94)) + [math.inf] * 3 + [math.nan] * 5)
    assert percentile_interval(v) == (0.0, math.inf)
    # 94 values 1 + i/93: the floor(0.025 * 93) = 2nd and the ceil(0.975 * 93) = 91st.
    assert percentile_interval(v[3:97]) == pytest.approx((1.0 + 2 / 93, 1.0 + 91 / 93))
    assert all(math.isnan(x) for x in percentile_interval([math.nan]))
    with pytest.raises(UserError, match="level"):
        percentile_interval(v, 1.0)


# ---- the score cache keeps per-unit scores -----------------------------------------------------

def test_score_cache_keeps_units_and_discards_other_identities(tmp_path):
    path = tmp_path / "cache.json"
    calls = []

    def compute(units):
        def f():
            calls.append(1)
            return units
        return f
    flags = Units(np.array([1, 0, 1, 1, 0.5]), None)
    loss = Units(np.array([3.25, 1.5]), np.array([4, 2]))
    cache = ScoreCache(path, {"metric": "accuracy"})
    assert cache.get("a", compute(flags)).num.tolist() == [1, 0, 1, 1, 0.5]
    assert cache.get("b", compute(loss)).den.tolist() == [4, 2]
    again = ScoreCache(path, {"metric": "accuracy"})
    a, b = again.get("a", compute(None)), again.get("b", compute(None))
    assert len(calls) == 2 and a.num.tolist() == [1, 0, 1, 1, 0.5] and a.den.tolist() == [1] * 5
    assert b.value == pytest.approx(4.75 / 6)
    assert ScoreCache(path, {"metric": "retrieval_top1"}).scores == {}
    # A cache of the old format (one number per checkpoint) is not read as units.
    path.write_text(json.dumps({"identity": {"metric": "accuracy"}, "scores": {"a": 0.5}}))
    assert ScoreCache(path, {"metric": "accuracy"}).scores == {}


def test_balanced_accuracy_is_the_mean_recall_over_classes_whichever_class_a_collapsed_model_picks():
    """AccuracyScorer.balanced_weights reweights the accuracy units (1 / the example's class size)
    so that sum(num) / sum(den) is the mean per-class recall, computed here by hand; a classifier
    that answers one class for every input scores 1 / classes whichever class that is, while its
    plain accuracy is that class's share of the test set."""
    from types import SimpleNamespace

    from ds_minimodel.study.scoring import AccuracyScorer

    rng = np.random.default_rng(3)
    labels = rng.choice(4, size=300, p=[0.5, 0.3, 0.15, 0.05])
    examples = [SimpleNamespace(label=int(y)) for y in labels]
    stub = SimpleNamespace(task=SimpleNamespace(test_in=lambda language: examples), _subset=lambda ex: ex)
    w = AccuracyScorer.balanced_weights(stub, "ny")

    def balanced(flags):
        return Units(flags * w, w).value

    for _ in range(5):
        predicted = rng.choice(4, size=300)
        flags = (predicted == labels).astype(float)
        recalls = [flags[labels == c].mean() for c in range(4)]
        assert balanced(flags) == pytest.approx(sum(recalls) / 4)
    for c in range(4):
        collapsed = (labels == c).astype(float)  # always answers class c
        assert balanced(collapsed) == pytest.approx(0.25)
        assert Units(collapsed, None).value == pytest.approx((labels == c).mean())


def test_plug_gap_is_each_methods_loss_lost_in_the_full_model_beyond_the_baselines_sampling_offset():
    from ds_minimodel.study.render import plug_gap_section

    def seed(own, plugged):  # own loss logged every other checkpoint: the last logged one counts
        return {"metric": [9.0, plugged], "own_valid_loss": [9.0, own] if own is not None else [None, None]}

    study = {"matched": {"baseline": "full"}, "curves": {
        "full": {"per_seed": {"0": seed(6.0, 6.1), "1": seed(6.2, 6.3)}},  # offset +0.1 (sampling)
        "mini": {"per_seed": {"0": seed(6.0, 7.0), "1": seed(None, 9.9)}},  # seed 1 never logged its own
    }}
    rows = [line.split(" | ") for line in plug_gap_section(study) if line.startswith("| full") or
            line.startswith("| mini")]
    # by hand: full own 6.1, plugged 6.2, gap +0.1; mini (seed 0 only) own 6.0, plugged 7.0, gap +1.0, beyond +0.9
    assert rows[0][1:] == ["2", "6.100", "6.200", "+0.100", "+0.000", "-", "- |"]
    assert rows[1][1:] == ["1", "6.000", "7.000", "+1.000", "+0.900", "-", "- |"]
    # With the bias refit (loss_scoring.refit_losses): its loss and the output side, as given.
    study["bias_refit"] = {"mini": {"refit": 6.5, "output_side": 0.5}}
    rows = [line.split(" | ") for line in plug_gap_section(study) if line.startswith("| mini")]
    assert rows[0][1:] == ["1", "6.000", "7.000", "+1.000", "+0.900", "6.500", "+0.500 |"]
    assert plug_gap_section({"matched": {"baseline": "full"}, "curves": {"mini": study["curves"]["mini"]}}) == []
