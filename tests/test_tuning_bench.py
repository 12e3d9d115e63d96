"""pytest-benchmark front end over the tuning scenarios: one Optuna trial (sampler plus
storage overhead, Branin objective) per storage and sampler."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")

from benchmarks.bench_tuning import SAMPLERS, STORAGES  # noqa: E402
from benchmarks.common import prepared  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("storage", STORAGES)
def test_optuna_trial(benchmark, storage: str, sampler: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "tuning.optuna"
    scenario = prepared("tuning.optuna", storage=storage, sampler=sampler)
    benchmark.pedantic(scenario.step, rounds=10, warmup_rounds=2)
    assert len(scenario.study.trials) == 12  # every round ran one trial
