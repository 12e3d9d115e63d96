"""pytest-benchmark front end over the tracking scenarios: logging one step of metrics."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.bench_tracking import POINTS  # noqa: E402
from benchmarks.common import prepared  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize(("scenario_id", "params"), list(POINTS.values()), ids=list(POINTS))
def test_log_one_step(benchmark, scenario_id: str, params: dict) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip(scenario_id.split(".")[1])
    benchmark.group = scenario_id
    scenario = prepared(scenario_id, **params)
    try:
        benchmark.pedantic(scenario.step, rounds=20, warmup_rounds=2)
        assert scenario.step_number == 22  # every round logged one step
    finally:
        scenario.tracker.finish()
