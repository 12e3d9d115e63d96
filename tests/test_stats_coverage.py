"""The suite's confidence intervals cover the truth about as often as they claim.

Each interval is computed on many simulated data sets drawn from a distribution whose answer
is known (the median of a log-normal, items over expected time, a Bernoulli mean, a ratio of
medians); the share of intervals holding the answer must be near 95%. With R data sets the
share has a binomial sd of sqrt(0.95 * 0.05 / R) (~1.2% at R = 300); the band below allows
the percentile bootstrap's known slight under-coverage at small n and still rejects an
interval that is really 68% (the planted bug: a one-sigma interval sold as 95%)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from suite import stats

REPLICATIONS = 300
BAND = (0.90, 0.99)  # nominal 0.95
MU, SIGMA = -6.0, 0.4  # log-normal step times around 2.5 ms


def coverage(interval: Callable[[np.random.Generator], tuple[float, float]], truth: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(REPLICATIONS):
        low, high = interval(rng)
        hits += low <= truth <= high
    return hits / REPLICATIONS


def step_times(rng: np.random.Generator, n: int = 50) -> np.ndarray:
    return rng.lognormal(MU, SIGMA, n)


def test_median_interval_of_summarize_covers_the_true_median() -> None:
    def interval(rng: np.random.Generator) -> tuple[float, float]:
        metric = stats.summarize("step_time", "s", False, step_times(rng))
        return metric.ci_low, metric.ci_high

    observed = coverage(interval, truth=float(np.exp(MU)))
    assert BAND[0] <= observed <= BAND[1], observed


def test_throughput_interval_covers_items_over_expected_time() -> None:
    items = 64
    truth = items / float(np.exp(MU + SIGMA**2 / 2))  # items / E[time]: the long-run rate

    def interval(rng: np.random.Generator) -> tuple[float, float]:
        metric = stats.throughput("throughput", "items/s", items, step_times(rng))
        return metric.ci_low, metric.ci_high

    observed = coverage(interval, truth)
    assert BAND[0] <= observed <= BAND[1], observed


def test_proportion_interval_covers_the_true_accuracy() -> None:
    def interval(rng: np.random.Generator) -> tuple[float, float]:
        metric = stats.proportion("accuracy", rng.random(360) < 0.9)  # digits-sized eval set
        return metric.ci_low, metric.ci_high

    observed = coverage(interval, truth=0.9)
    assert BAND[0] <= observed <= BAND[1], observed


def test_ratio_of_medians_interval_covers_the_true_speedup() -> None:
    def interval(rng: np.random.Generator) -> tuple[float, float]:
        slow = rng.lognormal(MU + np.log(1.5), SIGMA, 60)
        fast = step_times(rng, 60)
        metric = stats.ratio_of_medians("speedup", slow, fast)
        return metric.ci_low, metric.ci_high

    observed = coverage(interval, truth=1.5)
    assert BAND[0] <= observed <= BAND[1], observed


def test_paired_delta_interval_covers_the_true_difference() -> None:
    def interval(rng: np.random.Generator) -> tuple[float, float]:
        a = rng.random(360) < 0.9
        b = a & (rng.random(360) < 0.97)  # b loses 3% of a's correct items: delta -0.027
        _, low, high = stats.paired_bootstrap_delta(a, b)
        return low, high

    observed = coverage(interval, truth=-0.9 * 0.03)
    assert BAND[0] <= observed <= BAND[1], observed


def test_the_band_rejects_a_68pct_interval_sold_as_95pct() -> None:
    """The planted bug the band must catch: a one-sigma-wide interval."""
    def interval(rng: np.random.Generator) -> tuple[float, float]:
        return stats.bootstrap_ci(step_times(rng), confidence=0.68)

    observed = coverage(interval, truth=float(np.exp(MU)))
    assert observed < BAND[0], observed
    assert observed == pytest.approx(0.68, abs=0.08)
