"""Summary statistics with their uncertainty: bootstrap CIs (hierarchical over process
runs), claimed percentiles. Every number the suite publishes goes through here."""

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


Statistic: TypeAlias = Callable[[np.ndarray], np.ndarray]  # vectorised over the last axis


def _median(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=-1)


def _harmonic_mean(x: np.ndarray) -> np.ndarray:
    """Items over total time, from per-call rates: n / sum(1 / rate)."""
    return x.shape[-1] / np.sum(1.0 / x, axis=-1)


def _mean(x: np.ndarray) -> np.ndarray:
    return np.mean(x, axis=-1)


# The estimator named in Metric.estimator, as a vectorised statistic over raw samples.
ESTIMATORS: dict[str, Statistic] = {"median": _median, "rate": _harmonic_mean, "mean": _mean, "single": _median}


def bootstrap_estimates(samples: Samples, statistic: Statistic = _median,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """`resamples` bootstrap replicates of `statistic`, seeded, in bounded memory."""
    data = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 4_000_000 // data.size))
    return np.concatenate([
        statistic(data[rng.integers(0, data.size, size=(min(chunk, resamples - start), data.size))])
        for start in range(0, resamples, chunk)
    ])


def bootstrap_ci(
    samples: Samples,
    statistic: Statistic = _median,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of `statistic` (vectorised over the last axis), seeded."""
    data = np.asarray(samples, dtype=float)
    if data.size < 2:
        value = float(statistic(data[None, :])[0]) if data.size else math.nan
        return value, value
    estimates = bootstrap_estimates(data, statistic, resamples)
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
        estimator="median", run_sizes=[len(data)], run_values=[median],
    )


def throughput(name: str, unit: str, items_per_call: float, times: Sequence[float],
               clock: str = "host") -> Metric:
    """Items over total time (not the mean of per-call rates), CI by resampling calls."""
    data = np.asarray(times, dtype=float)
    rates = items_per_call / data
    low, high = bootstrap_ci(rates, _harmonic_mean)
    value = float(items_per_call * data.size / data.sum())
    return Metric(
        name=name, unit=unit, higher_is_better=True, samples=rates.tolist(), n=data.size,
        value=value, median=float(np.median(rates)), ci_low=low, ci_high=high, kind="steady", clock=clock,
        estimator="rate", run_sizes=[data.size], run_values=[value],
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
                  ci_high=float(high), run_values=[value])


def paired_ratio(name: str, numerator: Sequence[float], denominator: Sequence[float],
                 higher_is_better: bool = True, confidence: float = 0.95) -> Metric:
    """The median of per-round ratios of two contenders sampled in turn (ABAB, as
    suite.timing interleaves self-timed ones), CI by bootstrap of the rounds. Round i of
    each saw the same stretch of the host and the server, so drift that moves both cancels
    in their ratio: at c64 both sides of serving.loadgen swung between 4,200 and 8,300
    req/s from one second to the next, the ratio of medians' CI spanned 0.85-1.20 and the
    paired one 0.93-1.05 on the same 30 rounds."""
    rounds = min(len(numerator), len(denominator))
    if rounds == 0:
        raise ValueError(f"metric {name} has no paired rounds")
    ratios = np.asarray(numerator[:rounds], dtype=float) / np.asarray(denominator[:rounds], dtype=float)
    low, high = bootstrap_ci(ratios, _median, confidence)
    value = float(np.median(ratios))
    return Metric(name=name, unit="ratio", higher_is_better=higher_is_better, samples=[], n=rounds, value=value,
                  median=value, ci_low=low, ci_high=high, run_values=[value])


def proportion(name: str, outcomes: Sequence[bool] | np.ndarray, unit: str = "fraction") -> Metric:
    """A rate over independent outcomes (accuracy on an eval set), bootstrap CI over items.
    Deterministic for a fixed seed ("exact"): the CI is over the items, not over runs."""
    data = np.asarray(outcomes, dtype=float)
    low, high = bootstrap_ci(data, lambda x: x.mean(axis=-1))
    value = float(data.mean())
    return Metric(name=name, unit=unit, higher_is_better=True, samples=[], n=data.size,
                  value=value, median=value, ci_low=low, ci_high=high, estimator="mean", run_values=[value],
                  kind="exact")


def scalar(name: str, unit: str, higher_is_better: bool, value: float, kind: str = "steady") -> Metric:
    """One observation (a size in bytes, a cold-start time): no CI can be claimed."""
    return Metric(name=name, unit=unit, higher_is_better=higher_is_better, samples=[float(value)],
                  n=1, value=float(value), median=float(value), ci_low=float(value),
                  ci_high=float(value), kind=kind, estimator="single", run_sizes=[1], run_values=[float(value)])


def paired_bootstrap_delta(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float, float]:
    """Accuracy of b minus accuracy of a on the same items, with a paired bootstrap CI."""
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    diff = b - a
    low, high = bootstrap_ci(diff, lambda x: x.mean(axis=-1))
    return float(diff.mean()), low, high


def _within_run_draws(metric: Metric, draws: int, seed: int) -> np.ndarray:
    """`draws` replicates of one run's estimate: a bootstrap of its samples when it has
    several, else a normal with the spread of its own CI (a ratio, a proportion), else
    its value (one observation)."""
    if metric.estimator in ("median", "rate") and len(metric.samples) >= 2:
        return bootstrap_estimates(metric.samples, ESTIMATORS[metric.estimator], draws, seed)
    sigma = (metric.ci_high - metric.ci_low) / 3.92
    if not math.isfinite(sigma) or sigma <= 0:
        return np.full(draws, metric.value)
    return np.random.default_rng(seed).normal(metric.value, sigma, draws)


def between_run_cv(values: Sequence[float]) -> float | None:
    data = np.asarray(values, dtype=float)
    mean = float(np.mean(data)) if data.size else 0.0
    if data.size < 2 or mean == 0 or not np.all(np.isfinite(data)):
        return None
    return float(np.std(data, ddof=1) / abs(mean))


def combine_runs(runs: Sequence[Metric], confidence: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> Metric:
    """One metric from the same metric of R process runs. The value is the median of the
    runs' own estimates (one unlucky run cannot drag it); the CI is a hierarchical
    bootstrap: resample runs, then within each chosen run resample its samples, so the
    spread between runs (the largest source of variance) is inside the interval."""
    first = runs[0]
    values = [m.value for m in runs]
    pooled = [s for m in runs for s in m.samples]
    if len(runs) == 1:
        return first.model_copy(update={"run_values": values, "run_sizes": [len(first.samples)] if pooled else [],
                                        "between_run_cv": None})
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    inner = np.stack([_within_run_draws(m, resamples, BOOTSTRAP_SEED + i) for i, m in enumerate(runs)])
    chosen = rng.integers(0, len(runs), size=(resamples, len(runs)))
    estimates = np.median(inner[chosen, np.arange(resamples)[:, None]], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    single_calls = all(m.calls_per_sample == 1 for m in runs)
    return first.model_copy(update={
        "samples": pooled, "n": len(pooled) if len(pooled) >= len(runs) else sum(m.n for m in runs),
        "value": float(np.median(values)), "median": float(np.median(pooled)) if pooled else float(np.median(values)),
        "ci_low": float(low), "ci_high": float(high),
        "percentiles": percentiles(pooled, single_calls) if len(pooled) > len(runs) else [],
        "overhead": max((m.overhead for m in runs if m.overhead is not None), default=None),
        "calls_per_sample": max(m.calls_per_sample for m in runs),
        "run_sizes": [len(m.samples) for m in runs] if pooled else [],
        "run_values": values, "between_run_cv": between_run_cv(values),
    })
