"""pytest-benchmark front end over the same monitoring scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from benchmarks.common import prepared  # noqa: E402
from reference.monitoring.conformance import scipy_ks_loop  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("rows", [2_000, 20_000])
def test_drift_vectorised(benchmark, rows: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"monitoring.drift 40 features x {rows} rows"
    scenario = prepared("monitoring.drift", features=40, rows=rows)
    benchmark.pedantic(scenario.step, rounds=5, warmup_rounds=1)
    assert benchmark.stats.stats.min > 0


@pytest.mark.slow
@pytest.mark.parametrize("rows", [2_000, 20_000])
def test_drift_scipy_loop(benchmark, rows: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"monitoring.drift 40 features x {rows} rows"
    scenario = prepared("monitoring.drift", features=40, rows=rows)
    statistic, _ = benchmark.pedantic(scipy_ks_loop, args=(scenario.reference, scenario.current), rounds=3,
                                      warmup_rounds=0)
    assert statistic.shape == (40,)


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
