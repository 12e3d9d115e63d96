"""Statistics the suite publishes: floors, CIs, throughput definition, significance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from suite import stats


def test_sample_size_floors_reproduce_mlperf() -> None:
    assert stats.min_samples_for(90) == 64
    assert stats.min_samples_for(99) == 662


@pytest.mark.parametrize(("n", "claimed_p90", "claimed_p99"),
                         [(63, False, False), (64, True, False), (662, True, True)])
def test_percentiles_are_claimed_only_above_the_floor(n: int, claimed_p90: bool, claimed_p99: bool) -> None:
    by_q = {p.q: p for p in stats.percentiles(list(range(n)))}
    assert by_q[90.0].claimed is claimed_p90
    assert by_q[99.0].claimed is claimed_p99
    assert by_q[50.0].value == pytest.approx(np.percentile(range(n), 50))


def test_ci_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    small = stats.summarize("t", "s", False, rng.lognormal(size=20))
    large = stats.summarize("t", "s", False, rng.lognormal(size=2000))
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 3


def test_throughput_is_items_over_total_time_not_mean_of_rates() -> None:
    metric = stats.throughput("tp", "samples/s", 10, [1.0, 3.0])
    assert metric.value == pytest.approx(20 / 4.0)
    assert metric.value != pytest.approx(np.mean([10.0, 10 / 3]))
    assert metric.higher_is_better and metric.unit == "samples/s"


def test_non_finite_or_empty_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        stats.summarize("t", "s", False, [1.0, math.nan])
    with pytest.raises(ValueError, match="no samples"):
        stats.summarize("t", "s", False, [])


def test_proportion_ci_and_paired_delta() -> None:
    a = np.array([1] * 90 + [0] * 10)
    b = a.copy()
    b[:5] = 0  # b gets 5 items wrong that a got right
    accuracy = stats.proportion("acc", a)
    assert accuracy.value == pytest.approx(0.9) and accuracy.ci_low < 0.9 < accuracy.ci_high
    delta, low, high = stats.paired_bootstrap_delta(a, b)
    assert delta == pytest.approx(-0.05) and low <= delta <= high and high < 0


def test_paired_ratio_cancels_drift_that_moves_both_sides_of_a_round() -> None:
    """Two contenders sampled in turn while the host swings 2x from round to round: the
    ratio of each round is what is compared, so the swing leaves the CI tight."""
    rng = np.random.default_rng(3)
    host = rng.uniform(1.0, 2.0, 30)  # what each round's stretch of time did to both
    ours, theirs = host * rng.normal(1.0, 0.01, 30), 1.25 * host * rng.normal(1.0, 0.01, 30)
    paired = stats.paired_ratio("ratio", ours, theirs)
    assert paired.ci_low < 0.8 < paired.ci_high and paired.ci_high - paired.ci_low < 0.02
    unpaired = stats.ratio_of_medians("ratio", ours, theirs)
    assert unpaired.ci_high - unpaired.ci_low > 10 * (paired.ci_high - paired.ci_low)
    assert stats.paired_ratio("ratio", [1.0, 2.0, 3.0], [1.0, 1.0]).n == 2  # rounds pair up to the shorter side
    with pytest.raises(ValueError, match="no paired rounds"):
        stats.paired_ratio("ratio", [], [1.0])


def test_ratio_of_medians_brackets_true_speedup() -> None:
    rng = np.random.default_rng(2)
    slow, fast = rng.normal(2.0, 0.05, 300), rng.normal(1.0, 0.025, 300)
    speedup = stats.ratio_of_medians("speedup", slow, fast)
    assert speedup.ci_low < 2.0 < speedup.ci_high and speedup.value == pytest.approx(2.0, rel=0.02)
