"""pytest-benchmark front end over the same training scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from benchmarks.common import prepared  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
@pytest.mark.parametrize("scenario_id", ["training.baseline", "training.amp", "training.accumulation"])
def test_training_step(benchmark, scenario_id: str, model: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = scenario_id
    extra = {"dtype": "bf16"} if scenario_id == "training.amp" else {}
    scenario = prepared(scenario_id, model=model, **extra)
    benchmark.pedantic(scenario.step, rounds=5, warmup_rounds=1)
    assert benchmark.stats.stats.min > 0  # the step ran and was timed
