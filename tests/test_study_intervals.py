"""The study's interval (issue 23, item 6): whole chapters resampled, an interval built for few
seeds, and its coverage by simulation. Each is checked against a reference written here: closed
forms of Student's t, an enumeration of every chapter draw, the jackknife written out by hand."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from ds_minimodel.errors import UserError
from ds_minimodel.study.bootstrap import MethodScores, UnitClusters, bootstrap_ratios, t_quantile
from ds_minimodel.study.loss_scoring import sequence_documents
from ds_minimodel.study.scoring import chapter_clusters

ROOT = Path(__file__).resolve().parents[1]


def two_point(seeds, flops, values):
    """A method whose every seed has 2 points, (0 FLOPs, metric 0) and (flops, values[s, n]) per unit."""
    values = np.asarray(values, dtype=float)
    s, n = values.shape
    num = np.stack([np.zeros((s, n)), values], axis=1)
    fl = np.tile([0.0, float(flops)], (s, 1))
    return MethodScores(list(seeds), ["init", "final"], np.array([0, 10]), fl, fl / 1e9, num, np.ones_like(num))


def baseline(seeds, n):
    # Every unit 0 then 1: the curve is the same in every replicate, target 0.5 crossed at 50 FLOPs.
    return two_point(seeds, 100, np.ones((len(seeds), n)))


# On these curves the method's crossing of the target 0.5 is at 100 * 0.5 / M (M its final mean),
# the baseline's at 50: the ratio is M exactly (M > 0.5), and "not reached" (0) below it.

# ---- Student's t -------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
    assert t_quantile(1 - p, 2) == pytest.approx(-t_quantile(p, 2), rel=1e-12)
    # Many degrees of freedom: the normal; 4 and 10 from the printed tables.
    assert t_quantile(p, 1e7) == pytest.approx(NormalDist().inv_cdf(p), rel=1e-5)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)


# ---- chapter clusters ----------------------------------------------------------------------------

def test_scorers_cluster_ids_are_the_verses_chapters_and_none_for_other_tasks():
    got = chapter_clusters(["19.23.1", "19.23.2", "40.5.3"])
    assert got.kind == "chapter" and got.ids == ("19.23", "19.23", "40.5") and got.count == 2
    assert chapter_clusters(["en-12", "en-13"]) is None and chapter_clusters(["1.2.3", "17"]) is None


def test_validation_sequences_belong_to_the_document_holding_most_of_their_tokens():
    eos = 2
    # Documents (each ends with </s>): [5 5 5 5 5 2] [6 6 2] [7 7 7 7 7 7 7 2]; sequences of 4 tokens.
    stream = np.array([5, 5, 5, 5, 5, 2, 6, 6, 2, 7, 7, 7, 7, 7, 7, 7, 2])
    # seq 0 (tokens 0-3): 5 5 5 5, doc 0; seq 1 (4-7): 5 2 | 6 6, a tie, the earlier doc 0;
    # seq 2 (8-11): 2 | 7 7 7, doc 2 (3 of 4); seq 3 (12-15): 7 7 7 7, doc 2.
    assert sequence_documents(stream, eos, 4, 4).tolist() == [0, 0, 2, 2]


def test_cluster_resampling_draws_whole_chapters_every_replicate_a_possible_chapter_draw():
    # 3 chapters of 1, 2 and 3 verses; all verses of a chapter score alike, so a replicate's mean
    # is sum(k_c n_c v_c) / sum(k_c n_c) for the chapter counts k of some draw of 3 chapters.
    sizes, v = [1, 2, 3], [0.6, 0.9, 0.75]
    chapter = np.repeat([0, 1, 2], sizes)
    values = np.array(v)[chapter][None, :]
    methods = {"full": baseline([0], 6), "mini": two_point([0], 100, values)}
    got = bootstrap_ratios(methods, fraction=0.5, replicates=2000, seed=3,
                           clusters=UnitClusters("chapter", [str(c) for c in chapter]))
    assert got["unit_resampling"] == "chapter clusters" and got["clusters"] == 3
    possible = {}
    for draw in itertools.product(range(3), repeat=3):  # 27 equally likely draws
        k = np.bincount(draw, minlength=3)
        m = round(float((k * sizes * np.array(v)).sum() / (k * sizes).sum()), 12)
        possible[m] = possible.get(m, 0) + 1 / 27
    r = np.round(got["methods"]["mini"]["ratios"], 12)
    assert set(r) <= set(possible)
    for m, p in possible.items():  # each value about as often as the enumeration says (5 binomial SEs)
        assert abs((r == m).mean() - p) < 5 * math.sqrt(p * (1 - p) / 2000) + 1e-9
    # Verses drawn one by one reach means no chapter draw can give (e.g. one verse of chapter 1 alone).
    iid = bootstrap_ratios(methods, fraction=0.5, replicates=2000, seed=3)
    assert iid["unit_resampling"] == "units (iid: no cluster ids)" and iid["clusters"] is None
    assert not set(np.round(iid["methods"]["mini"]["ratios"], 12)) <= set(possible)


def test_cluster_resampling_has_the_variance_of_resampling_chapters():
    # 40 chapters of 5 identical verses: the ratio is the mean of 40 drawn chapter values, whose
    # variance is var(chapter values) / 40 (ddof 0); drawing 200 verses instead would give / 200.
    rng = np.random.default_rng(4)
    v = rng.uniform(0.6, 1.0, 40)
    chapter = np.repeat(np.arange(40), 5)
    methods = {"full": baseline([0], 200), "mini": two_point([0], 100, v[chapter][None, :])}
    b = 20000
    clusters = UnitClusters("chapter", chapter.tolist())
    got = bootstrap_ratios(methods, fraction=0.5, replicates=b, seed=1, clusters=clusters,
                           interval="percentile")["methods"]["mini"]["ratios"]
    expected = v.var() / 40
    # The sample variance of 20,000 draws is within 5% of its expectation (its relative SE is ~1%).
    assert got.var() == pytest.approx(expected, rel=0.05)
    assert got.mean() == pytest.approx(v.mean(), abs=4 * math.sqrt(expected / b))


def test_cluster_ids_must_be_one_per_unit():
    methods = {"full": baseline([0], 4), "mini": two_point([0], 100, np.full((1, 4), 0.8))}
    with pytest.raises(UserError, match="3 chapter ids for 4 scored units"):
        bootstrap_ratios(methods, fraction=0.5, replicates=10, clusters=UnitClusters("chapter", ["a", "a", "b"]))


# ---- the interval for few seeds -------------------------------------------------------------------

def test_jackknife_t_interval_is_the_hand_computed_one_when_only_seeds_vary():
    # Every verse of a seed scores alike, so the test set adds nothing; seed s's ratio alone is
    # M_s, and the ratio with seed s left out is the mean of the other two.
    m = np.array([0.9, 0.7, 0.8])
    methods = {"full": baseline([0, 1, 2], 10), "mini": two_point([0, 1, 2], 100, np.repeat(m[:, None], 10, axis=1))}
    got = bootstrap_ratios(methods, fraction=0.5, replicates=300, seed=0,
                           clusters=UnitClusters("chapter", list("aabbccddee")))
    e = got["methods"]["mini"]
    loo = np.log([(m.sum() - x) / 2 for x in m])
    var = 2 / 3 * ((loo - loo.mean()) ** 2).sum()
    t2 = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * 0.025))  # t_{2, 0.975}, closed form: 4.3027
    half = t2 * math.sqrt(var)
    assert e["interval_method"] == "jackknife-t" and got["interval_method"] == "jackknife-t"
    assert e["interval"] == pytest.approx([m.mean() * math.exp(-half), m.mean() * math.exp(half)], rel=1e-9)
    assert e["seed_variance_share"] == pytest.approx(1.0)
    # The baseline against itself: exactly 1; the percentile interval is kept beside it.
    assert got["methods"]["full"]["interval"] == pytest.approx([1.0, 1.0])
    assert "percentile_interval" in e and len(e["ratios"]) == 300


def test_a_censored_leave_one_out_falls_back_to_the_multiplier_bootstrap_scaled_to_students_t():
    # Leaving seed 0 out, the mean 0.375 never reaches the target 0.5: no log-ratio variance.
    m = np.array([0.9, 0.45, 0.3])
    methods = {"full": baseline([0, 1, 2], 4), "mini": two_point([0, 1, 2], 100, np.repeat(m[:, None], 4, axis=1))}
    b, seed = 400, 5
    got = bootstrap_ratios(methods, fraction=0.5, replicates=b, seed=seed,
                           clusters=UnitClusters("chapter", list("abcd")))
    e = got["methods"]["mini"]
    assert e["interval_method"] == "seed-t multiplier bootstrap (leaving one seed out censors the ratio)"
    # The draws written out: seed indices, chapter indices, then the Gaussian multipliers.
    rng = np.random.default_rng(seed)
    rng.integers(0, 3, (b, 3))
    rng.integers(0, 4, (b, 4))
    g = rng.standard_normal((b, 3))
    t2 = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * 0.025))
    k = t2 / NormalDist().inv_cdf(0.975) / math.sqrt(3 * 2)
    drawn = m.mean() + k * g @ (m - m.mean())
    ratios = np.sort(np.where(drawn >= 0.5, drawn, 0.0))
    lo, hi = ratios[int(np.floor(0.025 * (b - 1)))], ratios[int(np.ceil(0.975 * (b - 1)))]
    assert e["interval"] == pytest.approx([lo, hi], rel=1e-9)
    assert lo == 0.0 < m.mean() < hi


def test_more_seed_spread_gives_a_wider_interval_than_the_percentile_bootstrap():
    # The few-seed interval is wider than the percentile one when seeds disagree (it takes the
    # unbiased seed variance and t_2, not (S-1)/S of it and the normal).
    rng = np.random.default_rng(0)
    m = np.array([0.95, 0.7, 0.8])
    values = np.clip(m[:, None] + rng.normal(0, 0.05, (3, 60)), 0.55, 1.0)
    methods = {"full": baseline([0, 1, 2], 60), "mini": two_point([0, 1, 2], 100, values)}
    clusters = UnitClusters("chapter", np.repeat(np.arange(12), 5).tolist())
    e = bootstrap_ratios(methods, fraction=0.5, replicates=500, seed=2, clusters=clusters)["methods"]["mini"]
    lo, hi = e["interval"]
    plo, phi = e["percentile_interval"]
    assert lo < plo and hi > phi


# ---- coverage by simulation -------------------------------------------------------------------

def _coverage_module():
    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "bench" / "coverage.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_the_interval_covers_a_known_ratio_in_90_to_99_percent_of_simulated_studies():
    # bench/coverage.py reduced: 200 studies, 100 replicates each (`make coverage` runs 1,000),
    # only the interval the study uses. An interval like [0, inf] would cover always: the median
    # interval must also be finite and informative (upper / lower end below 6 around a true 2).
    cov = _coverage_module()
    got = cov.run(studies=200, replicates=100, seeds=3, rng_seed=2023, variants=("clusters, jackknife-t",))
    r = got["clusters, jackknife-t"]
    assert 0.90 <= r["coverage"] <= 0.99, r
    assert math.isfinite(r["median_width"]) and r["median_hi_over_lo"] < 6, r


def test_a_multiplier_bootstrap_interval_counts_its_own_undefined_replicates():
    """Where the interval comes from the multiplier bootstrap, "n = K of N" must count that
    bootstrap's replicates, not the percentile one's. Here the baseline's seeds start at 0, 0 and
    0.4: no draw of seeds brings its start to the target 0.5 (every percentile replicate defines a
    ratio), but a Gaussian multiplier draw can (target met at the start: no ratio)."""
    from ds_minimodel.study.matching import attach_bootstrap, matched_compute

    n, b, seed = 4, 400, 7
    start = np.array([0.0, 0.0, 0.4])

    def method(start_values, final):
        num = np.stack([np.repeat(start_values[:, None], n, axis=1), np.full((3, n), final)], axis=1)
        fl = np.tile([0.0, 100.0], (3, 1))
        return MethodScores([0, 1, 2], ["init", "final"], np.array([0, 10]), fl, fl / 1e9, num, np.ones_like(num))

    methods = {"full": method(start, 1.0), "mini": method(np.zeros(3), 0.3)}  # mini never reaches 0.5
    got = bootstrap_ratios(methods, fraction=0.5, replicates=b, seed=seed)
    assert got["methods"]["mini"]["interval_method"].startswith("seed-t multiplier bootstrap")
    assert not np.isnan(got["methods"]["mini"]["ratios"]).any()
    # The multiplier draws written out: seed indices, unit indices, then the multipliers.
    rng = np.random.default_rng(seed)
    rng.integers(0, 3, (b, 3))
    rng.integers(0, n, (b, n))
    g = rng.standard_normal((b, 3))
    t2 = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * 0.025))
    k = t2 / NormalDist().inv_cdf(0.975) / math.sqrt(3 * 2)
    drawn_start = start.mean() + k * g @ (start - start.mean())
    defined = int((drawn_start < 0.5).sum())
    assert 0 < defined < b
    matched = matched_compute({name: m.curve() for name, m in methods.items()}, fraction=0.5)
    attach_bootstrap(matched, got)
    e = matched["methods"]["mini"]
    assert (e["interval_defined"], e["interval_replicates"]) == (defined, b)
    # Under 90% of them define it (346 of 400 here): no interval, and the note says so.
    assert defined < 0.9 * b and e["interval_flops"] is None and f"n = {defined} of {b}" in e["interval_note"]


def test_one_seed_per_method_says_its_interval_leaves_the_seed_variance_out():
    """With one seed there is nothing to leave out: V_seeds is 0 and the interval is the test
    set's alone (checked here against the unit bootstrap's spread: no seed term). study.md's
    description must say so instead of describing a jackknife over seeds."""
    from ds_minimodel.study.bootstrap import interval_description

    rng = np.random.default_rng(3)
    values = np.clip(0.8 + rng.normal(0, 0.1, (1, 40)), 0.55, 1.0)
    methods = {"full": baseline([0], 40), "mini": two_point([0], 100, values)}
    got = bootstrap_ratios(methods, fraction=0.5, replicates=200, seed=1,
                           clusters=UnitClusters("chapter", np.repeat(np.arange(8), 5).tolist()))
    e = got["methods"]["mini"]
    assert e["interval_method"] == "jackknife-t" and e["seed_variance_share"] == 0.0
    text = interval_description(got)
    assert "one seed" in text and "seed variance" in text and "left out" in text, text
    # Three seeds: no such caveat.
    three = bootstrap_ratios({"full": baseline([0, 1, 2], 40),
                              "mini": two_point([0, 1, 2], 100, np.repeat(values, 3, axis=0) - [[0.0], [0.02], [0.04]])},
                             fraction=0.5, replicates=50, seed=1)
    assert "one seed" not in interval_description(three)
