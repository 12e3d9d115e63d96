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


def test_self_timed_contenders_take_turns_within_the_budget() -> None:
    """Contenders that time themselves elsewhere (ranks, servers): a cold first call each,
    warm-up by count, then one sample each in turn (ABAB) until every one has enough."""
    from suite.timing import time_interleaved

    calls: list[tuple[str, int]] = []

    def runner(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run(count: int) -> list[float]:
            calls.append((name, count))
            return [seconds] * count
        return run

    budget = Budget(warmup_calls=2, warmup_s=0.0, min_samples=10, max_samples=100, max_time_s=1e-9)
    timed = time_interleaved({"a": runner("a", 0.1), "b": runner("b", 0.2)}, budget, self_timed=True,
                             first_call=True)
    assert calls[:6] == [("a", 1)] * 3 + [("b", 1)] * 3  # cold, then two warm-up calls, each in turn
    assert calls[6:] == [("a", 1), ("b", 1)] * 10
    assert timed["a"].first_s == 0.1 and timed["a"].times == [0.1] * 10 and timed["b"].times == [0.2] * 10
    assert timed["a"].clock == "host" and timed["a"].cpu_times is None


def test_in_process_contenders_get_cpu_time_beside_wall_time() -> None:
    from suite.timing import time_interleaved

    budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=10, max_samples=10, max_time_s=1.0)
    timed = time_interleaved({"busy": lambda: sum(range(20000)), "idle": lambda: time.sleep(0.005)}, budget)
    busy, idle = timed["busy"], timed["idle"]
    assert busy.cpu_times is not None and idle.cpu_times is not None
    assert len(busy.cpu_times) == len(busy.times) == 10

    def share(t):  # type: ignore[no-untyped-def]
        return sum(t.cpu_times) / sum(t.times)

    assert share(busy) > 5 * share(idle)  # computing uses CPU for its time, sleeping does not (load-proof)


def test_sequential_sampling_stops_at_the_first_settled_look() -> None:
    """With `until`, every min_samples per contender is a look; the first settled one ends
    the sampling, and one that never settles runs to max_samples."""
    from suite.timing import time_interleaved

    def run(count: int) -> list[float]:
        return [0.1] * count

    def asked(settle_at: int | None) -> tuple[list[dict[str, int]], dict[str, int]]:
        looks: list[dict[str, int]] = []

        def settled(samples):  # type: ignore[no-untyped-def]
            looks.append({name: len(times) for name, times in samples.items()})
            return len(looks) == settle_at

        budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=5, max_samples=20, max_time_s=1e9)
        timed = time_interleaved({"a": run, "b": run}, budget, self_timed=True, until=settled)
        return looks, {name: len(t.times) for name, t in timed.items()}

    looks, taken = asked(settle_at=2)
    assert looks == [{"a": 5, "b": 5}, {"a": 10, "b": 10}] and taken == {"a": 10, "b": 10}
    looks, taken = asked(settle_at=None)
    assert [look["a"] for look in looks] == [5, 10, 15, 20] and taken == {"a": 20, "b": 20}
