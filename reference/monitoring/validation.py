"""The validation harness: how often the detector cries wolf, and how often it catches a
real shift. Drift libraries rarely publish either.

False alarms: reference and current windows are disjoint random draws from one pool of
data (nothing drifted), over 1 to 500 features; the rate of windows with at least one
flagged feature is reported with a Clopper-Pearson interval, uncorrected and corrected.
Power: detection rate against shift size and window size, on scikit-learn's breast_cancer
and wine (covariate shift made by over-sampling one sub-population) and on synthetic mean,
variance and shape shifts of one feature among ten.

Every repetition is a block of columns: R repetitions x F features become R*F columns of
one vectorised test call, then the p-values are folded back to (R, F) and corrected per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from scipy import stats

from reference.monitoring import correction
from reference.monitoring.chi2 import chi2_homogeneity
from reference.monitoring.ks import ks_2samp_columns
from reference.monitoring.mmd import mmd_permutation_test

PValues = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rows, cols) x 2 -> (cols,)
Adjust = Callable[[np.ndarray, str], np.ndarray]
CATEGORY_PROBABILITIES = np.array([0.4, 0.3, 0.2, 0.1])
POOL_FACTOR = 4  # the null pool holds 4x the window, so every repetition is a fresh split
_CELLS_PER_BATCH = 4_000_000  # values per window per vectorised call


@dataclass(frozen=True)
class Rate:
    """hits out of trials, with a two-sided 95% Clopper-Pearson (exact binomial) interval."""

    hits: int
    trials: int

    @property
    def value(self) -> float:
        return self.hits / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        low = stats.beta.ppf(0.025, self.hits, self.trials - self.hits + 1) if self.hits else 0.0
        high = stats.beta.ppf(0.975, self.hits + 1, self.trials - self.hits) if self.hits < self.trials else 1.0
        return float(low), float(high)


def ks_pvalues(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    return ks_2samp_columns(reference, current).pvalue


def chi2_pvalues(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Chi-square p-values for integer-coded categorical columns."""
    levels = int(max(reference.max(), current.max())) + 1
    counts = [(window[:, :, None] == np.arange(levels)).sum(axis=0) for window in (reference, current)]
    return chi2_homogeneity(*counts).pvalue


@dataclass(frozen=True)
class NullResult:
    features: int
    rows: int
    alpha: float
    any_alarm: dict[str, Rate]  # correction -> windows with >= 1 flagged feature
    per_test: Rate  # single uncorrected tests that rejected: the size actually achieved

    def predicted_uncorrected(self) -> float:
        """1 - (1 - size)^F: what independent uncorrected tests must give."""
        return 1.0 - (1.0 - self.per_test.value) ** self.features


def null_false_alarms(features: int, repetitions: int, rows: int, alpha: float = 0.05, seed: int = 0,
                      kind: str = "numeric", pvalues: PValues | None = None,
                      adjust: Adjust = correction.adjust) -> NullResult:
    """False-alarm rates when nothing drifted. One pool of POOL_FACTOR*rows rows of independent
    features is drawn; each repetition takes 2*rows of its rows at random, without
    replacement, as a reference window and a held-out current window."""
    test = pvalues or (ks_pvalues if kind == "numeric" else chi2_pvalues)
    rng = np.random.default_rng(seed)
    pool = null_pool(rng, POOL_FACTOR * rows, features, kind)
    alarms = dict.fromkeys(correction.CORRECTIONS, 0)
    rejected_single = 0
    batch = max(1, _CELLS_PER_BATCH // (rows * features))
    for start in range(0, repetitions, batch):
        count = min(batch, repetitions - start)
        picks = rng.permuted(np.tile(np.arange(len(pool)), (count, 1)), axis=1)[:, :2 * rows]
        drawn = pool[picks].transpose(1, 0, 2)  # (2*rows, count, features)
        p = test(drawn[:rows].reshape(rows, -1), drawn[rows:].reshape(rows, -1)).reshape(count, features)
        rejected_single += int((p <= alpha).sum())
        for method in alarms:
            alarms[method] += int((adjust(p, method) <= alpha).any(axis=1).sum())
    return NullResult(features, rows, alpha, {m: Rate(k, repetitions) for m, k in alarms.items()},
                      Rate(rejected_single, repetitions * features))


def null_pool(rng: np.random.Generator, rows: int, features: int, kind: str) -> np.ndarray:
    """Independent columns: continuous ones of assorted shapes, or 4-level categorical ones."""
    if kind == "categorical":
        return rng.choice(len(CATEGORY_PROBABILITIES), size=(rows, features), p=CATEGORY_PROBABILITIES)
    if kind != "numeric":
        raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
    shapes: tuple[Callable[..., Any], ...] = (rng.normal, rng.lognormal, rng.exponential,
                                              lambda size: rng.standard_t(3, size=size))
    pool = np.empty((rows, features))
    for k, draw in enumerate(shapes):
        pool[:, k::len(shapes)] = draw(size=(rows, len(range(k, features, len(shapes)))))
    return pool


# ---- power -------------------------------------------------------------------------------

SYNTHETIC_SHIFTS = {
    "mean": "mean moves by `shift` standard deviations",
    "variance": "standard deviation multiplied by 1 + `shift`",
    "shape": "skewness `shift` at the same mean and variance (standardised gamma)",
}
SYNTHETIC_FEATURES = 10  # one drifted feature among ten


@dataclass(frozen=True)
class PowerPoint:
    dataset: str
    shift: float
    window: int
    detected: Rate  # windows in which drift was declared (any feature, after correction)


@cache
def real_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, sub-population mask): breast_cancer's malignant tumours, wine's cultivar 0."""
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}
    if name not in loaders:
        raise ValueError(f"dataset must be one of {sorted(loaders)}, got {name!r}")
    bunch = loaders[name]()
    return bunch.data.astype(np.float64), bunch.target == 0


def power(dataset: str, shifts: Sequence[float], windows: Sequence[int], repetitions: int,
          alpha: float = 0.05, method: str = "bh", seed: int = 0, pvalues: PValues = ks_pvalues,
          adjust: Adjust = correction.adjust) -> list[PowerPoint]:
    """Detection rate per (shift, window). Real data: the reference window is drawn (with
    replacement) from the whole dataset, the current one from a mixture that takes each row
    from the sub-population with probability `shift` (0: no drift, 1: only the
    sub-population). Synthetic: feature 0 of ten is shifted as SYNTHETIC_SHIFTS describes."""
    rng = np.random.default_rng(seed)
    points = []
    for window in windows:
        for shift in shifts:
            hits = 0
            batch = max(1, _CELLS_PER_BATCH // (window * _feature_count(dataset)))
            for start in range(0, repetitions, batch):
                count = min(batch, repetitions - start)
                reference, current = _windows(dataset, shift, window, count, rng)
                p = pvalues(reference, current).reshape(count, -1)
                hits += int((adjust(p, method) <= alpha).any(axis=1).sum())
            points.append(PowerPoint(dataset, shift, window, Rate(hits, repetitions)))
    return points


def _feature_count(dataset: str) -> int:
    return SYNTHETIC_FEATURES if dataset in SYNTHETIC_SHIFTS else real_dataset(dataset)[0].shape[1]


def _windows(dataset: str, shift: float, window: int, repetitions: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(window, repetitions*features) reference and current blocks."""
    if dataset in SYNTHETIC_SHIFTS:
        reference = rng.normal(size=(window, repetitions, SYNTHETIC_FEATURES))
        current = rng.normal(size=(window, repetitions, SYNTHETIC_FEATURES))
        current[:, :, 0] = synthetic_shift(dataset, shift, rng, (window, repetitions))
    else:
        data, sub_population = real_dataset(dataset)
        members = np.flatnonzero(sub_population)
        reference = data[rng.integers(0, len(data), size=(window, repetitions))]
        from_sub = rng.random((window, repetitions)) < shift
        rows = np.where(from_sub, members[rng.integers(0, len(members), size=(window, repetitions))],
                        rng.integers(0, len(data), size=(window, repetitions)))
        current = data[rows]
    return reference.reshape(window, -1), current.reshape(window, -1)


def synthetic_shift(kind: str, shift: float, rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Draws of the shifted feature; shift 0 is the reference N(0, 1) in every kind."""
    if kind == "mean":
        return rng.normal(loc=shift, size=size)
    if kind == "variance":
        return rng.normal(scale=1.0 + shift, size=size)
    if kind == "shape":
        if shift == 0:
            return rng.normal(size=size)
        k = 4.0 / shift**2  # gamma(k) has skewness 2/sqrt(k)
        return (rng.gamma(k, size=size) - k) / np.sqrt(k)
    raise ValueError(f"synthetic shift must be one of {sorted(SYNTHETIC_SHIFTS)}, got {kind!r}")


# ---- multivariate ------------------------------------------------------------------------

@dataclass(frozen=True)
class CorrelationPower:
    correlation: float
    window: int
    mmd: Rate  # MMD permutation test at alpha
    per_feature: Rate  # KS on every feature + BH


def correlation_shift_power(correlations: Sequence[float], window: int, repetitions: int, features: int = 5,
                            alpha: float = 0.05, permutations: int = 200, seed: int = 0,
                            mmd_test: Callable[..., Any] = mmd_permutation_test) -> list[CorrelationPower]:
    """Features 0 and 1 become correlated while every marginal stays N(0, 1): invisible to
    per-feature tests by construction, visible to MMD (`mmd_test`: a test can hand in a broken one)."""
    rng = np.random.default_rng(seed)
    results = []
    for rho in correlations:
        covariance = np.eye(features)
        covariance[0, 1] = covariance[1, 0] = rho
        mmd_hits, feature_hits = 0, 0
        for _ in range(repetitions):
            reference = rng.normal(size=(window, features))
            current = rng.multivariate_normal(np.zeros(features), covariance, size=window)
            mmd_hits += mmd_test(reference, current, permutations=permutations,
                                 seed=int(rng.integers(2**31))).pvalue <= alpha
            feature_hits += bool((correction.adjust(ks_pvalues(reference, current)) <= alpha).any())
        results.append(CorrelationPower(rho, window, Rate(int(mmd_hits), repetitions),
                                        Rate(feature_hits, repetitions)))
    return results
