"""pytest-benchmark front end over the same training scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from benchmarks.bench_training import MODELS, TECHNIQUES  # noqa: E402
from benchmarks.common import prepared  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_training_step(benchmark, technique: str, model: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = technique
    scenario_id, extra = TECHNIQUES[technique]
    try:
        scenario = prepared(scenario_id, model=model, **extra)
    except NotImplementedError as exc:  # a requirement unmet here (fp16 autocast on CUDA only, say)
        pytest.skip(str(exc))
    benchmark.pedantic(scenario.step, rounds=5, warmup_rounds=1)
    assert benchmark.stats.stats.min > 0  # the step ran and was timed
