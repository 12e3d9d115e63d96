"""pytest-benchmark front end over the same distributed scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/). Each parameter
launches a 2-process job, times synchronised steps through it, and stops it."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.bench_distributed import VARIANTS  # noqa: E402
from benchmarks.common import prepared  # noqa: E402


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("scenario_id", sorted({scenario_id for scenario_id, _ in VARIANTS.values()}))
def test_distributed_step(benchmark, scenario_id: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = scenario_id
    scenario = prepared(scenario_id, world_sizes=[2])
    try:
        benchmark.pedantic(scenario.step, rounds=10, warmup_rounds=2)
        held = scenario.held_bytes()
    finally:
        scenario.teardown()
    assert len(held) == 2 and all(rank["parameters"] > 0 for rank in held)
    assert benchmark.stats is None or benchmark.stats.stats.min > 0
