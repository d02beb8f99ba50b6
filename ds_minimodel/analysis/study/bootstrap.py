"""Seed-averaged curves and the bootstrap interval of a matched-compute ratio (pure numpy).

Data. For one metric, each method has S seeds, each scored at the same P checkpoints, and each
score is kept per unit (a test example for accuracy, a verse pair for retrieval, a validation
sequence for MLM loss) as a numerator and a denominator: the metric of seed s at point p over a
set of units U is  sum(num[s, p, U]) / sum(den[s, p, U])  (accuracy: num = 0/1 correct, den = 1;
MLM loss: num = summed token losses of a sequence, den = its masked tokens). The method's curve
is the plain mean of its seeds' metrics at each checkpoint.

Bootstrap. One replicate draws S seeds with replacement and N units with replacement,
recomputes every method's averaged curve from them, the target (fraction x the baseline's
averaged final metric) and every crossing (matching.matched_compute, monotone fit included), and
keeps each method's ratio (matching.ratio_value: 0 when not reached, inf when reached at 0
FLOPs). The interval is the percentile one: the (1-level)/2 and (1+level)/2 order statistics of
the replicates' ratios, taken without interpolation (numpy's quantile methods "lower" and
"higher") so that the censored values 0 and inf stay well-defined; replicates where no ratio is
defined (NaN: the baseline has no crossing) are left out and counted.

Pairing. All runs are scored on the same units, so one unit draw serves every method. Seeds
are drawn once for all methods ("paired") when every method has the same seed values: seed s of
every method starts from the same initial embeddings and reads the data in the same order
(train.seed drives both), so its runs share that luck, and resampling them together keeps the
comparison within a seed. Otherwise each method's seeds are drawn on their own ("independent").
Draw order, for reproducibility: the seed indices ([B, S] at once; per method in order when
independent), then the unit indices ([B, N] at once), from numpy's default_rng(seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ds_minimodel.analysis.study.matching import Point, matched_compute
from ds_minimodel.errors import InvalidValueError, UserError


@dataclass
class MethodScores:
    """Every seed of one method on one metric, per unit, at the checkpoints all seeds share."""
    seeds: list[int]
    tags: list[str]
    steps: np.ndarray  # [P]
    # [S, P]: FLOPs differ slightly between seeds at one step (the MLM head's cost counts the
    # masked tokens each batch drew), so a curve's FLOPs, like its seconds, are a mean over seeds.
    flops: np.ndarray
    seconds: np.ndarray  # [S, P]
    num: np.ndarray  # [S, P, N]
    den: np.ndarray  # [S, P, N]

    def __post_init__(self):
        s, p, n = self.num.shape
        assert self.den.shape == (s, p, n) and self.seconds.shape == self.flops.shape == (s, p)
        assert len(self.seeds) == s and len(self.steps) == len(self.tags) == p

    @property
    def per_seed(self) -> np.ndarray:
        """[S, P]: each seed's metric over every unit."""
        return self.num.sum(axis=2) / self.den.sum(axis=2)

    def curve(self, values: np.ndarray | None = None, flops: np.ndarray | None = None,
              seconds: np.ndarray | None = None) -> list[Point]:
        """Points of the seed-averaged curve (`values`, `flops` and `seconds` [P] default to the
        mean over this method's seeds, of every unit)."""
        values = self.per_seed.mean(axis=0) if values is None else values
        flops = self.flops.mean(axis=0) if flops is None else flops
        seconds = self.seconds.mean(axis=0) if seconds is None else seconds
        return [Point(int(st), float(fl), float(se), float(v), tag)
                for st, fl, se, v, tag in zip(self.steps, flops, seconds, values, self.tags)]


def stack_seeds(name: str, seeds: list[int], tags: list[list[str]], steps: list[list[int]], flops: list[list[int]],
                seconds: list[list[float]], num: list[np.ndarray], den: list[np.ndarray]) -> MethodScores:
    """One MethodScores from each seed's run (lists over seeds); the runs must share their
    checkpoint steps, or their average would mix different amounts of training."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"method {name!r} has seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} more than "
                        "once: two runs of one seed are the same run and would shrink the interval")
    for i in range(1, len(seeds)):
        if list(steps[i]) != list(steps[0]):
            raise UserError(f"method {name!r}: seed {seeds[i]} has checkpoints at steps {list(steps[i])}, seed "
                            f"{seeds[0]} at {list(steps[0])}: the seeds of a method must share their checkpoints")
    shapes = {np.shape(a) for a in num} | {np.shape(a) for a in den}
    if len(shapes) != 1:
        raise UserError(f"method {name!r}: its seeds were scored on different units ({sorted(shapes)})")
    return MethodScores(list(seeds), list(tags[0]), np.asarray(steps[0]), np.asarray(flops, dtype=np.float64),
                        np.asarray(seconds, dtype=np.float64), np.stack([np.asarray(a, np.float64) for a in num]),
                        np.stack([np.asarray(a, np.float64) for a in den]))


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap values: order statistics, no interpolation."""
    if not 0 < level < 1:
        raise InvalidValueError(f"interval level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    return (float(np.quantile(v, (1 - level) / 2, method="lower")),
            float(np.quantile(v, (1 + level) / 2, method="higher")))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[B, k] indices drawn from range(n) -> [B, n] how often each was drawn."""
    out = np.zeros((idx.shape[0], n))
    np.add.at(out, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()), 1.0)
    return out


def paired(methods: dict[str, MethodScores]) -> bool:
    return len({tuple(m.seeds) for m in methods.values()}) == 1


def bootstrap_ratios(methods: dict[str, MethodScores], *, baseline: str = "full", fraction: float = 1.0,
                     baseline_at: str = "crossing", better: str = "higher", fit: str = "isotonic",
                     replicates: int = 1000, seed: int = 0, level: float = 0.95, resample_units: bool = True) -> dict:
    """Each method's FLOP ratio in every bootstrap replicate, and its percentile interval (the
    module docstring says what a replicate resamples)."""
    if replicates < 1:
        raise InvalidValueError(f"bootstrap replicates must be >= 1, got {replicates}")
    units = {m.num.shape[2] for m in methods.values()}
    if len(units) != 1:
        raise UserError(f"the methods were scored on different numbers of units ({sorted(units)}): they must share "
                        "one test set")
    n = units.pop()
    rng = np.random.default_rng(seed)
    is_paired = paired(methods)
    if is_paired:
        s = len(next(iter(methods.values())).seeds)
        shared = _counts(rng.integers(0, s, (replicates, s)), s)
        seed_counts = {name: shared for name in methods}
    else:
        seed_counts = {name: _counts(rng.integers(0, len(m.seeds), (replicates, len(m.seeds))), len(m.seeds))
                       for name, m in methods.items()}
    unit_counts = _counts(rng.integers(0, n, (replicates, n)), n) if resample_units else np.ones((replicates, n))
    values, flops, seconds = {}, {}, {}
    for name, m in methods.items():
        # [B, S, P]: each seed's metric over the replicate's units; then the mean over its seeds.
        per_seed = np.einsum("spn,bn->bsp", m.num, unit_counts) / np.einsum("spn,bn->bsp", m.den, unit_counts)
        c = seed_counts[name]
        values[name] = np.einsum("bs,bsp->bp", c, per_seed) / len(m.seeds)
        flops[name] = c @ m.flops / len(m.seeds)
        seconds[name] = c @ m.seconds / len(m.seeds)
    ratios = {name: np.empty(replicates) for name in methods}
    for b in range(replicates):
        curves = {name: m.curve(values[name][b], flops[name][b], seconds[name][b]) for name, m in methods.items()}
        matched = matched_compute(curves, baseline, fraction, baseline_at, better, fit)
        for name in methods:
            ratios[name][b] = matched["methods"][name]["ratio_value"]
    out = {}
    for name, r in ratios.items():
        lo, hi = percentile_interval(r, level)
        out[name] = {"interval": [lo, hi], "replicates": replicates, "undefined": int(np.isnan(r).sum()),
                     "not_reached": int((r == 0).sum()), "at_zero_flops": int(np.isinf(r).sum()), "ratios": r}
    return {"methods": out, "seed_resampling": "paired" if is_paired else "independent",
            "unit_resampling": resample_units, "replicates": replicates, "seed": seed, "level": level}
