"""Seed-averaged curves and the interval of a matched-compute ratio (pure numpy).

Data. For one metric, each method has S seeds, each scored at the same P checkpoints, and each
score is kept per unit (a test example for accuracy, a verse pair for retrieval, a validation
sequence for MLM loss) as a numerator and a denominator: the metric of seed s at point p over a
set of units U is  sum(num[s, p, U]) / sum(den[s, p, U])  (accuracy: num = 0/1 correct, den = 1;
MLM loss: num = summed token losses of a sequence, den = its masked tokens). The method's curve
is the plain mean of its seeds' metrics at each checkpoint.

Units come in clusters. The test verses of one Bible chapter share its names, topic and style,
so a model that suits a chapter gets many of its verses right together: resampling verses one by
one treats 600 correlated verses as 600 independent ones and understates the test set's noise.
The scorers give each unit its cluster (`UnitClusters`: the (book, chapter) of a test verse or a
retrieval pair; for a validation sequence, the chapter document holding most of its tokens), and
a replicate draws whole clusters with replacement, each bringing all its units. Without cluster
ids (a task whose examples are not verses) the units are drawn one by one, and the output says
so ("units (iid: no cluster ids)").

Bootstrap replicates. One replicate draws S seeds with replacement and the clusters (or units)
with replacement, recomputes every method's averaged curve from them, the target (fraction x the
baseline's averaged final metric) and every crossing (matching.matched_compute, monotone fit
included), and keeps each method's ratio (matching.ratio_value: 0 when not reached, inf when
reached at 0 FLOPs). These replicates are kept ("ratios": the average over languages draws from
them) with their percentile interval ("percentile_interval"): the (1-level)/2 and (1+level)/2
order statistics, taken without interpolation so that the censored values 0 and inf stay
well-defined; replicates where no ratio is defined (NaN: the baseline has no crossing) are left
out and counted.

The interval ("interval", `interval="jackknife-t"`, the default): built for few seeds. A
percentile bootstrap over S = 3 seeds sees only 10 distinct seed multisets, and it estimates the
seed variance by its plug-in value, (S-1)/S of the unbiased one; and even an unbiased variance
from 3 seeds needs Student's t with 2 degrees of freedom (4.30 at 95%), not the normal 1.96. So,
on the log ratio (ratios are multiplicative; the log is symmetric where the ratio is not):

    log r  +-  sqrt( t_{S-1}^2 * V_seeds  +  t_{C-1}^2 * V_test )

- V_seeds: the jackknife over seeds: leave seed s out (of every method when paired, else of one
  method at a time, each such group adding its own term with its own t_{S-1}), recompute the
  ratio from the others on every unit, and V = (S-1)/S * sum_s (log r_(-s) - their mean)^2, which
  is exactly s^2 / S for a mean;
- V_test: the test set's noise: the bootstrap above with every seed kept once and only the
  clusters drawn, as the normal-equivalent spread of its central `level` range (order statistics,
  so a few censored replicates do not make it infinite); C is the number of clusters.
The seed part keeps its own few degrees of freedom rather than a Welch-Satterthwaite blend: when
3 seeds happen to agree, a blend gives many degrees of freedom and a short interval exactly when
the seed variance is underestimated (in the simulation below that cost 4 points of coverage).

Where the log ratio is censored (the point estimate is "not reached" or "reached at 0 FLOPs", or
leaving one seed out makes it so), it has no variance, and the interval is the percentile
interval of a multiplier bootstrap: the same cluster draws, and the seed part drawn as
mean + k * sum_s g_s (x_s - mean) over the seeds' curves and FLOPs with Gaussian g_s (shared by
paired methods), k = (t_{S-1} / z) / sqrt(S (S-1)): the seed mean's unbiased variance, widened
to Student's quantiles. Censored replicates then sit at the ends (0, inf) as in the percentile
interval. `interval_method` per method says which one was used, and with the multiplier
bootstrap `interval_defined` how many of its own replicates define a ratio (the "n" of its line).

Why this interval, by simulation (bench/coverage.py, `make coverage`: 200 studies with a known
true ratio, 60 chapters of ~10 verses, chapter-correlated method effects, seed spread in speed and
level; the real matching; 1,000 replicates): the nominal 95% interval covered the truth in

    seeds  seed spread  before (verses iid, percentile)  chapters, percentile  this interval
      3    base         90.5% (median width 1.38)        94.5% (1.59)          97.0% (3.00)
      5    base         89.0% (1.29)                     94.5% (1.49)          95.0% (1.90)
      3    doubled      80.5% (2.20)                     85.5% (2.37)          96.0% (6.53)
      5    doubled      85.5% (2.14)                     87.5% (2.32)          93.5% (3.20)

(width: upper minus lower end, around a true ratio of 2). Chapters fix most of the shortfall
when the seeds agree; when they do not, only this interval holds, at 3 seeds as at 5. Requiring
5 seeds with the percentile interval would not have been enough (87.5%); 5 seeds make this
interval narrower (3.20 against 6.53), so more seeds buy precision, not validity.
`interval="percentile"` keeps the percentile interval as the interval.

Pairing. All runs are scored on the same units, so one unit draw serves every method. Seeds
are drawn once for all methods ("paired") when every method has the same seed values: seed s of
every method starts from the same initial embeddings and reads the data in the same order
(train.seed drives both), so its runs share that luck, and resampling them together keeps the
comparison within a seed. Otherwise each method's seeds are drawn on their own ("independent").
Draw order, for reproducibility: the seed indices ([B, S] at once; per method in order when
independent), then the unit indices ([B, N] at once) or the cluster indices ([B, C] at once),
then, only where some method needs the multiplier bootstrap, the multipliers ([B, S] at once;
per method in order when independent), from numpy's default_rng(seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import numpy as np

from ds_minimodel.errors import InvalidValueError, UserError
from ds_minimodel.study.matching import Point, matched_compute


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
    num: np.ndarray  # [S, P, N], or [S, P, N, C]: each unit's C components of `statistic`
    den: np.ndarray  # [S, P, N]
    # The metric of a set of units from their sums: None is sum(num) / sum(den) (accuracy, a mean
    # loss); else statistic(num sums [..., C], den sums [...]) -> [...] (Cohen's kappa: scoring.py).
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def __post_init__(self):
        s, p, n = self.num.shape[:3]
        assert self.den.shape == (s, p, n) and self.seconds.shape == self.flops.shape == (s, p)
        assert len(self.seeds) == s and len(self.steps) == len(self.tags) == p
        assert self.num.ndim == (3 if self.statistic is None else 4)

    def metric(self, num_sums: np.ndarray, den_sums: np.ndarray) -> np.ndarray:
        """The metric of units whose num and den sum to these (any leading shape)."""
        return num_sums / den_sums if self.statistic is None else self.statistic(num_sums, den_sums)

    @property
    def per_seed(self) -> np.ndarray:
        """[S, P]: each seed's metric over every unit."""
        return self.metric(self.num.sum(axis=2), self.den.sum(axis=2))

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
                seconds: list[list[float]], num: list[np.ndarray], den: list[np.ndarray],
                statistic: Callable | None = None) -> MethodScores:
    """One MethodScores from each seed's run (lists over seeds); the runs must share their
    checkpoint steps, or their average would mix different amounts of training."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"method {name!r} has seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} more than "
                        "once: two runs of one seed are the same run and would shrink the interval")
    for i in range(1, len(seeds)):
        if list(steps[i]) != list(steps[0]):
            raise UserError(f"method {name!r}: seed {seeds[i]} has checkpoints at steps {list(steps[i])}, seed "
                            f"{seeds[0]} at {list(steps[0])}: the seeds of a method must share their checkpoints")
    shapes = {np.shape(a)[:2] for a in num} | {np.shape(a) for a in den}
    if len(shapes) != 1 or len({np.shape(a) for a in num}) != 1:
        raise UserError(f"method {name!r}: its seeds were scored on different units ({sorted(shapes)})")
    return MethodScores(list(seeds), list(tags[0]), np.asarray(steps[0]), np.asarray(flops, dtype=np.float64),
                        np.asarray(seconds, dtype=np.float64), np.stack([np.asarray(a, np.float64) for a in num]),
                        np.stack([np.asarray(a, np.float64) for a in den]), statistic)


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


# ---- Student's t quantile (no scipy here) -------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz;
    Numerical Recipes 6.4), convergent for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        even = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0 < p < 1 or not df > 0:
        raise InvalidValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2


# ---- the bootstrap -----------------------------------------------------------------------------

@dataclass(frozen=True)
class UnitClusters:
    """Which cluster each unit belongs to, in unit order (the scorers' `clusters()`). The units
    of one cluster are correlated: the verses of one chapter share its names, topic and style,
    and so do the validation sequences cut from one chapter's text. So the bootstrap draws whole
    clusters. `kind` names them in study.json and study.md ("chapter", or the data's own
    document kind where it is not a Bible chapter)."""
    kind: str
    ids: tuple

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(self.ids))

    @property
    def count(self) -> int:
        return len(set(self.ids))


INTERVALS = ("jackknife-t", "percentile")


def _log(ratio: float) -> float:
    """log of a ratio value: 0 (not reached) -> -inf, inf (at 0 FLOPs) -> inf, NaN stays."""
    if math.isnan(ratio):
        return math.nan
    return -math.inf if ratio == 0 else math.log(ratio)


def _ratios(methods: dict[str, MethodScores], values: dict, flops: dict, seconds: dict, match: dict) -> dict:
    """Each method's ratio value on the curves given by `values`, `flops`, `seconds` ([P] each)."""
    curves = {name: m.curve(values[name], flops[name], seconds[name]) for name, m in methods.items()}
    matched = matched_compute(curves, **match)
    return {name: matched["methods"][name]["ratio_value"] for name in methods}


def _seed_jackknife(methods: dict[str, MethodScores], is_paired: bool, match: dict) -> list[tuple[int, dict | None]]:
    """Per group of seeds that are left out together (paired: seed s of every method; otherwise
    each method's own seeds): (its seed count S, each method's log ratio with each of its seeds
    left out in turn [S], every unit kept), or (S, None) where S < 2 leaves nothing to leave out."""
    groups = [list(methods)] if is_paired else [[name] for name in methods]
    out = []
    for group in groups:
        s_count = len(methods[group[0]].seeds)
        if s_count < 2:
            out.append((s_count, None))
            continue
        logs = {name: np.empty(s_count) for name in methods}
        for s in range(s_count):
            values, flops, seconds = {}, {}, {}
            for name, m in methods.items():
                keep = np.ones(len(m.seeds), dtype=bool)
                if name in group:
                    keep[s] = False
                values[name] = m.per_seed[keep].mean(axis=0)
                flops[name], seconds[name] = m.flops[keep].mean(axis=0), m.seconds[keep].mean(axis=0)
            for name, r in _ratios(methods, values, flops, seconds, match).items():
                logs[name][s] = _log(r)
        out.append((s_count, logs))
    return out


def _jackknife_t(point: float, jack: list, name: str, unit_logs: np.ndarray, n_clusters: int, level: float) -> dict:
    """The interval for few seeds (the module docstring): exp(log point +- h), with
    h^2 = sum over seed groups of t_{S-1}^2 x the group's jackknife variance + t_{C-1}^2 x the
    test set's (C clusters). Returns the interval and its parts, or no interval and why (the
    caller then uses the multiplier bootstrap)."""
    theta = _log(point)
    if math.isnan(theta):
        return {"interval": None, "why": "the point estimate has no ratio"}
    if not math.isfinite(theta):
        return {"interval": None, "why": "the point estimate is censored "
                                         f"({'not reached' if theta < 0 else 'reached at 0 FLOPs'})"}
    q = (1 + level) / 2
    z = NormalDist().inv_cdf(q)
    seed_var = seed_half2 = 0.0
    for s_count, logs in jack:
        if logs is None:
            continue
        v = logs[name]
        if not np.all(np.isfinite(v)):
            return {"interval": None, "why": "leaving one seed out censors the ratio"}
        var = (s_count - 1) / s_count * float(((v - v.mean()) ** 2).sum())
        seed_var += var
        seed_half2 += t_quantile(q, s_count - 1) ** 2 * var
    lo_u, hi_u = percentile_interval(unit_logs, level)
    if not (math.isfinite(lo_u) and math.isfinite(hi_u)):
        return {"interval": None, "why": "resampling the test set censors the ratio"}
    # The test set's part as the normal-equivalent spread of its bootstrap's central range: order
    # statistics, so that a few censored replicates (log 0 = -inf) do not make it infinite.
    unit_var = ((hi_u - lo_u) / (2 * z)) ** 2
    t_units = t_quantile(q, n_clusters - 1) if n_clusters > 1 else z  # few clusters (MLM loss): Student's too
    half = math.sqrt(seed_half2 + t_units ** 2 * unit_var)
    return {"interval": [math.exp(theta - half), math.exp(theta + half)], "log_se": math.sqrt(seed_var + unit_var),
            "log_half_width": half,
            "seed_variance_share": seed_var / (seed_var + unit_var) if seed_var + unit_var > 0 else 0.0}


def _multiplier_scale(s_count: int, level: float) -> float:
    """Per seed, the scale of the Gaussian multipliers: sum_s g_s (x_s - mean) / sqrt(S (S - 1))
    has the variance of the seed mean, s^2 / S; t_{S-1} / z widens its quantiles to Student's."""
    if s_count < 2:
        return 0.0
    q = (1 + level) / 2
    return t_quantile(q, s_count - 1) / NormalDist().inv_cdf(q) / math.sqrt(s_count * (s_count - 1))


def bootstrap_ratios(methods: dict[str, MethodScores], *, baseline: str = "full", fraction: float = 1.0,
                     baseline_at: str = "crossing", better: str = "higher", fit: str = "isotonic",
                     replicates: int = 1000, seed: int = 0, level: float = 0.95, resample_units: bool = True,
                     clusters: UnitClusters | None = None, interval: str = "jackknife-t") -> dict:
    """Each method's FLOP ratio in every bootstrap replicate, and its interval (the module
    docstring says what a replicate resamples and how `interval` is built). `clusters`: the
    units' clusters, drawn whole; None draws the units themselves (iid), recorded as such."""
    if replicates < 1:
        raise InvalidValueError(f"bootstrap replicates must be >= 1, got {replicates}")
    if interval not in INTERVALS:
        raise InvalidValueError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    units = {m.num.shape[2] for m in methods.values()}
    if len(units) != 1:
        raise UserError(f"the methods were scored on different numbers of units ({sorted(units)}): they must share "
                        "one test set")
    n = units.pop()
    if clusters is not None and len(clusters.ids) != n:
        raise UserError(f"{len(clusters.ids)} {clusters.kind} ids for {n} scored units: the cluster ids must be "
                        "the units' own, in unit order")
    match = {"baseline": baseline, "fraction": fraction, "baseline_at": baseline_at, "better": better, "fit": fit}
    rng = np.random.default_rng(seed)
    is_paired = paired(methods)
    if is_paired:
        s = len(next(iter(methods.values())).seeds)
        shared = _counts(rng.integers(0, s, (replicates, s)), s)
        seed_counts = {name: shared for name in methods}
    else:
        seed_counts = {name: _counts(rng.integers(0, len(m.seeds), (replicates, len(m.seeds))), len(m.seeds))
                       for name, m in methods.items()}
    n_clusters = None
    if not resample_units:
        unit_counts, unit_resampling = np.ones((replicates, n)), "none"
    elif clusters is not None:
        # Draw clusters, and give each unit its cluster's count: a drawn cluster brings all its units.
        _, code = np.unique(np.asarray(clusters.ids, dtype=str), return_inverse=True)
        n_clusters = int(code.max()) + 1 if n else 0
        unit_counts = _counts(rng.integers(0, n_clusters, (replicates, n_clusters)), n_clusters)[:, code]
        unit_resampling = f"{clusters.kind} clusters"
    else:
        unit_counts, unit_resampling = _counts(rng.integers(0, n, (replicates, n)), n), "units (iid: no cluster ids)"
    per_seed, values, flops, seconds = {}, {}, {}, {}
    for name, m in methods.items():
        # [B, S, P]: each seed's metric over the replicate's units; then the mean over its seeds.
        per_seed[name] = m.metric(np.einsum("spn...,bn->bsp...", m.num, unit_counts),
                                  np.einsum("spn,bn->bsp", m.den, unit_counts))
        c = seed_counts[name]
        values[name] = np.einsum("bs,bsp->bp", c, per_seed[name]) / len(m.seeds)
        flops[name] = c @ m.flops / len(m.seeds)
        seconds[name] = c @ m.seconds / len(m.seeds)

    def replicate_ratios(values: dict, flops: dict, seconds: dict, log: bool = False) -> dict[str, np.ndarray]:
        out = {name: np.empty(replicates) for name in methods}
        for b in range(replicates):
            for name, r in _ratios(methods, {k: v[b] for k, v in values.items()}, {k: v[b] for k, v in flops.items()},
                                   {k: v[b] for k, v in seconds.items()}, match).items():
                out[name][b] = _log(r) if log else r
        return out

    ratios = replicate_ratios(values, flops, seconds)
    t_parts, fallback = {}, {}
    if interval == "jackknife-t":
        mean_flops = {k: m.flops.mean(axis=0) for k, m in methods.items()}
        mean_seconds = {k: m.seconds.mean(axis=0) for k, m in methods.items()}
        point = _ratios(methods, {k: m.per_seed.mean(axis=0) for k, m in methods.items()}, mean_flops, mean_seconds,
                        match)
        jack = _seed_jackknife(methods, is_paired, match)
        # The test set's own noise: the same unit draws, every seed kept once.
        tile = lambda d: {k: np.broadcast_to(v, (replicates, v.size)) for k, v in d.items()}  # noqa: E731
        unit_logs = replicate_ratios({k: v.mean(axis=1) for k, v in per_seed.items()}, tile(mean_flops),
                                     tile(mean_seconds), log=True)
        t_parts = {name: _jackknife_t(point[name], jack, name, unit_logs[name], n_clusters or n, level)
                   for name in methods}
        if any(t["interval"] is None for t in t_parts.values()):
            # The multiplier bootstrap: the same unit draws; the seed part drawn with Gaussian
            # multipliers (shared by paired methods), scaled to Student's t (_multiplier_scale).
            if is_paired:
                g = rng.standard_normal((replicates, len(next(iter(methods.values())).seeds)))
                mult = {name: g for name in methods}
            else:
                mult = {name: rng.standard_normal((replicates, len(m.seeds))) for name, m in methods.items()}
            mv, mf, ms = {}, {}, {}
            for name, m in methods.items():
                k = _multiplier_scale(len(m.seeds), level)
                mean = per_seed[name].mean(axis=1)
                mv[name] = mean + k * np.einsum("bs,bsp->bp", mult[name], per_seed[name] - mean[:, None, :])
                mf[name] = mean_flops[name] + k * mult[name] @ (m.flops - mean_flops[name])
                ms[name] = mean_seconds[name] + k * mult[name] @ (m.seconds - mean_seconds[name])
            # A FLOP count cannot fall between checkpoints: keep each drawn curve in training order.
            mf = {k: np.maximum.accumulate(v, axis=1) for k, v in mf.items()}
            ms = {k: np.maximum.accumulate(v, axis=1) for k, v in ms.items()}
            fallback = replicate_ratios(mv, mf, ms)
    out = {}
    for name, r in ratios.items():
        lo, hi = percentile_interval(r, level)
        entry = {"interval": [lo, hi], "interval_method": "percentile", "percentile_interval": [lo, hi],
                 "replicates": replicates, "undefined": int(np.isnan(r).sum()), "not_reached": int((r == 0).sum()),
                 "at_zero_flops": int(np.isinf(r).sum()), "ratios": r}
        if name in t_parts:
            t = t_parts[name]
            if t["interval"] is None:
                # Its own replicates define (or not) this interval: count them, not the percentile ones.
                entry.update(interval=list(percentile_interval(fallback[name], level)),
                             interval_method=f"seed-t multiplier bootstrap ({t['why']})",
                             interval_defined=int((~np.isnan(fallback[name])).sum()))
            else:
                entry.update(interval=t["interval"], interval_method="jackknife-t",
                             **{k: t[k] for k in ("log_se", "log_half_width", "seed_variance_share")})
        out[name] = entry
    # The baseline's own transfer: its gain from its first point (the initial embeddings, when the
    # study scores them: the random-embedding control) to its final checkpoint, in the better
    # direction, over the same replicates (a percentile interval: study.py's transfer check).
    sign = 1.0 if better == "higher" else -1.0
    first_last = methods[baseline].per_seed.mean(axis=0)
    gains = sign * (values[baseline][:, -1] - values[baseline][:, 0])
    baseline_gain = {"point": float(sign * (first_last[-1] - first_last[0])),
                     "interval": list(percentile_interval(gains, level)), "interval_method": "percentile",
                     "first": float(first_last[0]), "final": float(first_last[-1])}
    return {"methods": out, "baseline_gain": baseline_gain, "seed_resampling": "paired" if is_paired else "independent",
            "unit_resampling": unit_resampling, "clusters": n_clusters, "units": n,
            "seeds": sorted({len(m.seeds) for m in methods.values()}), "interval_method": interval,
            "replicates": replicates, "seed": seed, "level": level}


# What study.md prints about the interval (compare.py's "method"); the numbers are bench/coverage.py's.
INTERVAL_SUMMARY = ("the interval is built for few seeds (bootstrap.py): on the log ratio, +- the jackknife over seeds "
                    "with Student's t on S-1 degrees of freedom, combined with a bootstrap of whole chapters for the "
                    "test set (test verses and verse pairs by their chapter, validation sequences by the chapter "
                    "document they come from), recomputing curves, target and crossings in every replicate; where "
                    "a ratio is censored, a bootstrap whose seed part is scaled to Student's t.")
INTERVAL_WHY = ("Why this interval and not more seeds or the percentile bootstrap: with 3 seeds a percentile "
                "bootstrap over seeds and verses sees 10 seed multisets and takes (S-1)/S of the seed variance; in "
                "200 simulated studies with a known ratio (bench/coverage.py, `make coverage`) its 95% interval held "
                "the truth in 90.5% of them (80.5% with the seeds' spread doubled), this one in 97.0% (96.0%); at 5 "
                "seeds the percentile one over chapters still held it in only 87.5% with the doubled spread, this one "
                "in 93.5%. More seeds make this interval narrower; they do not make the percentile one valid.")


def interval_description(boot: dict) -> str:
    """One paragraph for study.md: what the interval resampled and how it was built, from the
    bootstrap's record in study.json (`bootstrap_ratios`' top-level keys)."""
    pct = round(100 * boot["level"])
    resampled = boot.get("unit_resampling")
    if resampled is True:  # studies written before clusters: units drawn one by one
        resampled = "units (iid: no cluster ids)"
    what = {"none": "no units", None: "the units"}.get(resampled, None)
    if what is None:
        what = (f"the {boot['clusters']} {resampled} (each drawn with all its units)" if boot.get("clusters")
                else f"the {boot.get('units', '')} {resampled}".replace("  ", " "))
    seeds = f"the seeds ({'paired across methods' if boot['seed_resampling'] == 'paired' else 'per method'})"
    draws = f"{boot['replicates']} replicates (stream {boot['seed']}) drawing {seeds} and {what}"
    # One seed (of some method) leaves nothing to resample or leave out: its seed variance is 0 here.
    one = (" A method with one seed has no seed variance to estimate: it is left out, and its interval "
           "covers the test set only.") if min(boot.get("seeds") or [2]) < 2 else ""
    if boot.get("interval_method", "percentile") == "percentile":
        return f"Interval: {pct}% percentile bootstrap, {draws}.{one}"
    return (f"Interval: {pct}% for few seeds, on the log ratio: +- sqrt(t_(S-1)^2 x V_seeds + t_(C-1)^2 x V_test), "
            f"V_seeds by leaving each seed out in turn, V_test from a bootstrap of {what} with every seed kept; "
            "where the ratio is censored (not reached, or reached at 0 FLOPs, with all seeds or one left out), "
            f"the percentile interval of a bootstrap whose seed part is scaled to Student's t. Bootstrap: {draws}.{one}")
