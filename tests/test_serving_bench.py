"""pytest-benchmark front end over the same serving scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("fastapi")

from benchmarks.common import axis, prepared  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]


@pytest.mark.parametrize("batch", axis("serving.inprocess", "batch", "quick"))
def test_inprocess_step(benchmark, batch: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "serving.inprocess"
    scenario = prepared("serving.inprocess", batch=batch)
    benchmark.pedantic(scenario.step, rounds=20, warmup_rounds=2)
    assert benchmark.stats.stats.min > 0


@pytest.mark.parametrize("batching", axis("serving.fastapi", "batching", "quick"))
def test_fastapi_request(benchmark, batching: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "serving.fastapi"
    scenario = prepared("serving.fastapi", batching=batching, model="small")
    try:
        benchmark.pedantic(scenario.step, rounds=30, warmup_rounds=3)
    finally:
        scenario.teardown()  # type: ignore[attr-defined]
    assert benchmark.stats.stats.min > 0
    assert scenario.deployment is None  # type: ignore[attr-defined]
