"""Summary statistics with their uncertainty: bootstrap CIs, claimed percentiles, the
Mann-Whitney U test. Every number the suite publishes goes through here."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeAlias

import numpy as np

from suite.schema import Metric, Percentile

Samples: TypeAlias = Sequence[float] | np.ndarray

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261126
REPORTED_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
# MLPerf LoadGen's early-stopping floor: the smallest n with q**n < 0.0013, which gives
# its published 64 samples for p90 and 662 for p99 (and 130 for p95, 10 for p50).
_FLOOR_MISS_PROBABILITY = 0.0013


def min_samples_for(q: float) -> int:
    """Samples needed before percentile q (0-100) may be claimed."""
    return math.ceil(math.log(_FLOOR_MISS_PROBABILITY) / math.log(q / 100.0))


def percentiles(samples: Sequence[float], of_single_calls: bool = True) -> list[Percentile]:
    """Claimed only above the sample-size floor, and only when each sample is one call."""
    values = np.percentile(np.asarray(samples, dtype=float), REPORTED_PERCENTILES)
    return [
        Percentile(q=q, value=float(v), claimed=of_single_calls and len(samples) >= min_samples_for(q),
                   min_samples=min_samples_for(q))
        for q, v in zip(REPORTED_PERCENTILES, values)
    ]


def bootstrap_ci(
    samples: Samples,
    statistic: Callable[[np.ndarray], np.ndarray] = lambda x: np.median(x, axis=-1),
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of `statistic` (vectorised over the last axis), seeded."""
    data = np.asarray(samples, dtype=float)
    if data.size < 2:
        value = float(statistic(data[None, :])[0]) if data.size else math.nan
        return value, value
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    chunk = max(1, min(resamples, 4_000_000 // data.size))
    estimates = np.concatenate([
        statistic(data[rng.integers(0, data.size, size=(min(chunk, resamples - start), data.size))])
        for start in range(0, resamples, chunk)
    ])
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    return float(low), float(high)


def summarize(
    name: str,
    unit: str,
    higher_is_better: bool,
    samples: Sequence[float],
    *,
    kind: str = "steady",
    clock: str = "host",
    overhead: float | None = None,
    calls_per_sample: int = 1,
) -> Metric:
    """A metric from raw samples: median with bootstrap CI and flagged percentiles."""
    data = [float(s) for s in samples]
    if not data:
        raise ValueError(f"metric {name} has no samples")
    if not all(math.isfinite(s) for s in data):
        raise ValueError(f"metric {name} has non-finite samples")
    median = float(np.median(data))
    low, high = bootstrap_ci(data)
    return Metric(
        name=name, unit=unit, higher_is_better=higher_is_better, samples=data, n=len(data),
        value=median, median=median, ci_low=low, ci_high=high,
        percentiles=percentiles(data, calls_per_sample == 1) if len(data) > 1 else [],
        kind=kind, clock=clock, overhead=overhead, calls_per_sample=calls_per_sample,
    )


def throughput(name: str, unit: str, items_per_call: float, times: Sequence[float],
               clock: str = "host") -> Metric:
    """Items over total time (not the mean of per-call rates), CI by resampling calls."""
    data = np.asarray(times, dtype=float)
    rates = items_per_call / data
    low, high = bootstrap_ci(data, lambda x: items_per_call * x.shape[-1] / x.sum(axis=-1))
    return Metric(
        name=name, unit=unit, higher_is_better=True, samples=rates.tolist(), n=data.size,
        value=float(items_per_call * data.size / data.sum()), median=float(np.median(rates)),
        ci_low=low, ci_high=high, kind="steady", clock=clock,
    )


def ratio_of_medians(name: str, numerator: Sequence[float], denominator: Sequence[float],
                     higher_is_better: bool = True) -> Metric:
    """A ratio of two medians measured in the same run (a speedup), CI by paired-free
    bootstrap of both sides independently."""
    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ra = np.median(a[rng.integers(0, a.size, (BOOTSTRAP_RESAMPLES, a.size))], axis=1)
    rb = np.median(b[rng.integers(0, b.size, (BOOTSTRAP_RESAMPLES, b.size))], axis=1)
    low, high = np.percentile(ra / rb, [2.5, 97.5])
    value = float(np.median(a) / np.median(b))
    return Metric(name=name, unit="ratio", higher_is_better=higher_is_better, samples=[],
                  n=min(a.size, b.size), value=value, median=value, ci_low=float(low),
                  ci_high=float(high))


def proportion(name: str, outcomes: Sequence[bool] | np.ndarray, unit: str = "fraction") -> Metric:
    """A rate over independent outcomes (accuracy on an eval set), bootstrap CI over items."""
    data = np.asarray(outcomes, dtype=float)
    low, high = bootstrap_ci(data, lambda x: x.mean(axis=-1))
    value = float(data.mean())
    return Metric(name=name, unit=unit, higher_is_better=True, samples=[], n=data.size,
                  value=value, median=value, ci_low=low, ci_high=high)


def scalar(name: str, unit: str, higher_is_better: bool, value: float, kind: str = "steady") -> Metric:
    """One observation (a size in bytes, a cold-start time): no CI can be claimed."""
    return Metric(name=name, unit=unit, higher_is_better=higher_is_better, samples=[float(value)],
                  n=1, value=float(value), median=float(value), ci_low=float(value),
                  ci_high=float(value), kind=kind)


def paired_bootstrap_delta(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float, float]:
    """Accuracy of b minus accuracy of a on the same items, with a paired bootstrap CI."""
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    diff = b - a
    low, high = bootstrap_ci(diff, lambda x: x.mean(axis=-1))
    return float(diff.mean()), low, high


def mann_whitney_p(a: Samples, b: Samples) -> float:
    """Two-sided Mann-Whitney U p-value (as asv uses); 1.0 when either side is too small."""
    from scipy.stats import mannwhitneyu

    if len(a) < 3 or len(b) < 3:
        return 1.0
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
