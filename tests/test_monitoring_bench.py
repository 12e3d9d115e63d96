"""pytest-benchmark front end over the same monitoring scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from benchmarks.bench_monitoring import DRIFT_SIZES  # noqa: E402
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
@pytest.mark.parametrize(("scenario_id", "params"), [("monitoring.performance", {}),
                                                     ("monitoring.prometheus", {"mode": "instrumentation"})])
def test_monitor_overhead(benchmark, scenario_id: str, params: dict) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "monitoring per batch of predictions"
    try:
        scenario = prepared(scenario_id, **params)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    benchmark.pedantic(scenario.step, rounds=20, warmup_rounds=2)
    assert benchmark.stats.stats.min > 0
