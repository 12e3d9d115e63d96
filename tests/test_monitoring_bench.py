"""pytest-benchmark front end over the same monitoring scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from benchmarks.bench_monitoring import DRIFT_SIZES, LabelRequest, MonitorOverhead  # noqa: E402
from benchmarks.common import prepared  # noqa: E402
from reference.monitoring.conformance import scipy_ks_loop  # noqa: E402

FEATURES, ROWS = DRIFT_SIZES[0][0], DRIFT_SIZES[1]


@pytest.mark.slow
@pytest.mark.parametrize("rows", ROWS)
def test_drift_vectorised(benchmark, rows: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"monitoring.drift {FEATURES} features x {rows} rows"
    scenario = prepared("monitoring.drift", features=FEATURES, rows=rows)
    benchmark.pedantic(scenario.step, rounds=5, warmup_rounds=1)
    assert benchmark.stats.stats.min > 0


@pytest.mark.slow
@pytest.mark.parametrize("rows", ROWS)
def test_drift_scipy_loop(benchmark, rows: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"monitoring.drift {FEATURES} features x {rows} rows"
    scenario = prepared("monitoring.drift", features=FEATURES, rows=rows)
    statistic, _ = benchmark.pedantic(scipy_ks_loop, args=(scenario.reference, scenario.current), rounds=3,
                                      warmup_rounds=0)
    assert statistic.shape == (FEATURES,)


@pytest.mark.slow
@pytest.mark.parametrize("monitor", MonitorOverhead.params)
def test_monitor_overhead(benchmark, monitor: str) -> None:  # type: ignore[no-untyped-def]
    """The asv benchmark's own setup and step, so both front ends time the same thing."""
    benchmark.group = "monitoring per batch of predictions"
    bench = MonitorOverhead()
    try:
        bench.setup(monitor)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    benchmark.pedantic(bench.time_batch, args=(monitor,), rounds=20, warmup_rounds=2)
    assert benchmark.stats.stats.min > 0


@pytest.mark.slow
def test_label_request(benchmark) -> None:  # type: ignore[no-untyped-def]
    """/label with a million-row monitor (it recomputed a window: ms). The figure is the
    benchmark's record, not an assertion: a timed bound is a flaky test on a shared host."""
    pytest.importorskip("prometheus_client")
    bench = LabelRequest()
    bench.setup()
    benchmark.pedantic(bench.time_label, rounds=2000, warmup_rounds=50)
    assert benchmark.stats.stats.min > 0
