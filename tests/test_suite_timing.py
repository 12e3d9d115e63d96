"""The clock: warm-up stays out of the samples, budgets bound the sampling, overhead is small."""

from __future__ import annotations

import time

from suite.profiles import Budget
from suite.timing import OVERHEAD_TARGET, time_calls, time_once, timer_overhead


def test_warm_up_is_by_count_and_time_and_not_sampled() -> None:
    calls = []

    def fn() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.05 if len(calls) == 1 else 0.001)  # a slow first call must not appear among the samples

    budget = Budget(warmup_calls=5, warmup_s=0.02, min_samples=30, max_samples=30, max_time_s=1.0)
    timed = time_calls(fn, budget)
    assert timed.warmup_calls >= 5 and timed.warmup_s >= 0.02
    assert len(timed.times) == 30 and timed.calls_per_sample == 1
    assert len(calls) == timed.warmup_calls + 3 + 30  # warm-up, three probe calls, the samples
    assert max(timed.times) < 0.04
    assert timed.clock == "host"


def test_sampling_stops_at_max_time_once_min_samples_are_in() -> None:
    budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=5, max_samples=10_000, max_time_s=0.1)
    timed = time_calls(lambda: time.sleep(0.01), budget)
    assert 5 <= len(timed.times) <= 15


def test_min_samples_win_over_max_time() -> None:
    budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=8, max_samples=100, max_time_s=0.001)
    assert len(time_calls(lambda: time.sleep(0.002), budget).times) == 8


def test_timer_overhead_is_measured_and_tiny() -> None:
    overhead = timer_overhead("host")
    assert 0 < overhead < 1e-5


def test_time_once_returns_the_result() -> None:
    seconds, value = time_once(lambda: 42)
    assert value == 42 and seconds >= 0


def test_calls_too_short_for_the_clock_are_grouped_into_samples() -> None:
    budget = Budget(warmup_calls=50, warmup_s=0.0, min_samples=20, max_samples=20, max_time_s=1.0)
    timed = time_calls(lambda: None, budget)
    assert timed.calls_per_sample > 1
    assert timed.overhead <= OVERHEAD_TARGET * 2 * sorted(timed.times)[len(timed.times) // 2]


def test_grouped_samples_do_not_claim_percentiles() -> None:
    from suite import stats

    metric = stats.summarize("t", "s", False, [0.001] * 700, calls_per_sample=4)
    assert metric.calls_per_sample == 4 and not any(p.claimed for p in metric.percentiles)
