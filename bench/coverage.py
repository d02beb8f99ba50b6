"""Coverage of the study's compute-ratio interval, by simulation (issue 23, item 6).

    python bench/coverage.py                 # 200 studies, 1,000 replicates, 3 and 5 seeds (`make coverage`)
    python bench/coverage.py --replicates 200 --seeds 3

Each simulated study is a small version of `make study`: a baseline ("full") and a method
("mini") whose expected learning curve is the baseline's with compute scaled by a known TRUE
ratio (the method reaches any accuracy with 1/R of the baseline's FLOPs), S seeds each, 7 points
(the initial embeddings at 0 FLOPs and 6 evenly spaced checkpoints), about 600 test units in 60
chapters. Everything then goes through the real code: `bootstrap_ratios` (and in it the real
matching: isotonic fit, interpolated crossing, target = the baseline's averaged final accuracy),
and we count how often the nominal 95% interval contains the true ratio.

The model of a test unit's outcome. Unit i of chapter c, scored on seed s of method m at compute
x, is correct when

    a(x * r_m * exp(u_ms)) + delta_ms + d_c + e_i + g_cm + h_im + eta_msi + xi_mspi > 0

- a(x) = A0 + A1 * log1p(x / X0) / log1p(1 / X0): ability rises fast, then slowly, and is still
  rising at the end of the budget (x = 1); r_full = 1, r_mini = TRUE_RATIO;
- seed luck: a log-speed u and a level delta (sds per SCENARIOS); seed s of the two
  methods shares part of it (correlation SEED_PAIRING: the same initial embeddings and data
  order), which is why the study pairs seeds;
- the test set: chapter difficulty d_c and unit difficulty e_i, shared by every model; a
  chapter x method interaction g_cm and a unit x method one h_im (the method's embeddings suit
  some chapters better): this is what the test set's composition adds to a ratio, and g makes
  it correlated within chapters;
- a model's own luck on a unit: eta (kept across its checkpoints) and xi (fresh per checkpoint).

Every noise term of the method has the same distribution as the baseline's, so the expected
accuracy curve of the method (over seeds and test sets) is exactly the baseline's at R x the
compute: the true ratio is R at every target, whatever the sample's target turns out to be.

What is compared on the same simulated studies:
- "old": the interval before issue 23: units (test examples) resampled iid, percentile bootstrap
  over seeds and units;
- "clusters, percentile": chapters resampled whole, still the percentile bootstrap;
- "clusters, jackknife-t": the interval the study now uses (bootstrap.py's module docstring).
Where a study gives no interval (the point estimate censored), it counts as not covering.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from ds_minimodel.errors import InvalidValueError
from ds_minimodel.study.bootstrap import MethodScores, UnitClusters, bootstrap_ratios

TRUE_RATIO = 2.0
POINTS = 7  # init + 6 checkpoints, as make study-quick
CHAPTERS = 60  # the held-out chapters a 600-verse test subset spans
UNITS_PER_CHAPTER = 10  # on average (1 + Poisson(9))
A0, A1, X0 = -0.83, 1.4, 0.1  # accuracy about 0.25 at the start and 0.6 at the baseline's end
SEED_PAIRING = 0.5
# The seeds' spread (log-speed sd, level sd): "base" has seeds' final accuracies about 0.045 apart
# (sd), as the real studies' (docs/results.md: e.g. 0.273, 0.297, 0.182); "seed-heavy" twice that.
SCENARIOS = {"base": (0.25, 0.1), "seed-heavy": (0.4, 0.25)}
CHAPTER_SD, UNIT_SD = 0.4, 0.8  # difficulty, shared by every model
CHAPTER_METHOD_SD, UNIT_METHOD_SD = 0.25, 0.4  # interactions, per method
MODEL_UNIT_SD, CHECKPOINT_SD = 0.5, 0.5  # a model's own luck on a unit: kept, and per checkpoint
FLOPS = 1e12  # the budget's scale (any: ratios do not depend on it)

INTERVAL_VARIANTS = ("old", "clusters, percentile", "clusters, jackknife-t")


def ability(x: np.ndarray) -> np.ndarray:
    return A0 + A1 * np.log1p(x / X0) / math.log1p(1 / X0)


def simulate_study(rng: np.random.Generator, seeds: int,
                   scenario: str = "base") -> tuple[dict[str, MethodScores], UnitClusters]:
    """One study's scores (both methods, `seeds` seeds each, paired) and its units' chapters."""
    seed_speed, seed_level = SCENARIOS[scenario]
    sizes = 1 + rng.poisson(UNITS_PER_CHAPTER - 1, CHAPTERS)
    chapter = np.repeat(np.arange(CHAPTERS), sizes)
    n = chapter.size
    difficulty = rng.normal(0, CHAPTER_SD, CHAPTERS)[chapter] + rng.normal(0, UNIT_SD, n)
    x = np.linspace(0, 1, POINTS)
    # Seed luck, [2 methods, S]: a shared part and each method's own.
    def paired_noise(sd):
        shared = rng.normal(0, 1, seeds)
        own = rng.normal(0, 1, (2, seeds))
        return sd * (math.sqrt(SEED_PAIRING) * shared + math.sqrt(1 - SEED_PAIRING) * own)
    speed, level = paired_noise(seed_speed), paired_noise(seed_level)
    methods = {}
    for k, (name, r) in enumerate((("full", 1.0), ("mini", TRUE_RATIO))):
        interaction = rng.normal(0, CHAPTER_METHOD_SD, CHAPTERS)[chapter] + rng.normal(0, UNIT_METHOD_SD, n)
        a = ability(r * x[None, :] * np.exp(speed[k])[:, None]) + level[k][:, None]  # [S, P]
        own = rng.normal(0, MODEL_UNIT_SD, (seeds, 1, n))
        fresh = rng.normal(0, CHECKPOINT_SD, (seeds, POINTS, n))
        num = (a[:, :, None] + (difficulty + interaction)[None, None, :] + own + fresh > 0).astype(np.float64)
        flops = np.tile(x * FLOPS, (seeds, 1))
        methods[name] = MethodScores(list(range(seeds)), ["init"] + [f"step{i}" for i in range(1, POINTS)],
                                     np.arange(POINTS) * 100, flops, flops / 1e9, num, np.ones_like(num))
    return methods, UnitClusters("chapter", tuple(str(c) for c in chapter))


@dataclass
class Tally:
    covered: int = 0
    no_interval: int = 0
    fallback: int = 0
    widths: list = None
    spans: list = None

    def __post_init__(self):
        self.widths, self.spans = [], []

    def add(self, lo: float, hi: float, fallback: bool = False):
        if not (math.isfinite(lo) or lo == 0) or math.isnan(hi):
            self.no_interval += 1
            self.widths.append(math.inf)
            self.spans.append(math.inf)
            return
        self.fallback += fallback
        self.covered += lo <= TRUE_RATIO <= hi
        self.widths.append(hi - lo)
        self.spans.append(hi / lo if lo > 0 else math.inf)

    def summary(self, studies: int) -> dict:
        return {"coverage": self.covered / studies, "median_width": float(np.median(self.widths)),
                "median_hi_over_lo": float(np.median(self.spans)), "no_interval": self.no_interval,
                "fallback": self.fallback}


def run(studies: int = 200, replicates: int = 1000, seeds: int = 3, rng_seed: int = 2023, level: float = 0.95,
        variants: tuple[str, ...] = INTERVAL_VARIANTS, scenario: str = "base") -> dict[str, dict]:
    """Coverage and median width of each interval variant over `studies` simulated studies (the
    same studies for every variant: they are drawn whatever `variants` holds)."""
    if studies < 1 or seeds < 2:
        raise InvalidValueError(f"need at least 1 study and 2 seeds, got {studies} and {seeds}")
    if scenario not in SCENARIOS:
        raise InvalidValueError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
    unknown = set(variants) - set(INTERVAL_VARIANTS)
    if unknown:
        raise InvalidValueError(f"unknown interval variant(s) {sorted(unknown)}: choose from {INTERVAL_VARIANTS}")
    rng = np.random.default_rng(rng_seed)
    tallies = {v: Tally() for v in variants}
    for i in range(studies):
        methods, clusters = simulate_study(rng, seeds, scenario)
        if "old" in tallies:
            old = bootstrap_ratios(methods, replicates=replicates, seed=i, level=level, interval="percentile")
            tallies["old"].add(*old["methods"]["mini"]["interval"])
        if len(tallies) > ("old" in tallies):
            m = bootstrap_ratios(methods, replicates=replicates, seed=i, level=level,
                                 clusters=clusters)["methods"]["mini"]
            if "clusters, percentile" in tallies:
                tallies["clusters, percentile"].add(*m["percentile_interval"])
            if "clusters, jackknife-t" in tallies:
                tallies["clusters, jackknife-t"].add(*m["interval"], fallback=m["interval_method"] != "jackknife-t")
    return {v: t.summary(studies) for v, t in tallies.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--rng-seed", type=int, default=2023)
    ap.add_argument("--level", type=float, default=0.95)
    args = ap.parse_args(argv)
    print(f"true ratio {TRUE_RATIO}, {args.studies} studies, {args.replicates} replicates, {CHAPTERS} chapters of "
          f"~{UNITS_PER_CHAPTER} units, {POINTS} points, rng seed {args.rng_seed}, level {args.level}")
    ok = True
    for scenario, seeds in ((sc, s) for sc in args.scenario for s in args.seeds):
        start = time.time()
        result = run(args.studies, args.replicates, seeds, args.rng_seed, args.level, scenario=scenario)
        for variant, r in result.items():
            print(f"{scenario:<10} seeds {seeds}  {variant:<22} coverage {r['coverage']:.3f}  "
                  f"median width {r['median_width']:.2f} "
                  f"(hi/lo {r['median_hi_over_lo']:.2f})  no interval {r['no_interval']}  multiplier fallback "
                  f"{r['fallback']}")
        print(f"  ({time.time() - start:.0f} s)")
        chosen = result["clusters, jackknife-t"]
        ok &= 0.90 <= chosen["coverage"] <= 0.99 and math.isfinite(chosen["median_width"])
    print("chosen interval (clusters, jackknife-t): " + ("coverage within 90-99%" if ok else "OUT OF 90-99%"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
