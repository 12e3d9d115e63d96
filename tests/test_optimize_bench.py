"""pytest-benchmark front end over the same optimisation scenarios (`nox -s tests -- -m slow
--benchmark-enable --benchmark-autosave` saves JSON under .benchmarks/)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

from benchmarks.bench_optimize import VARIANTS, prepared_runtime  # noqa: E402


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:torch.quantize_per_")
@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("runtime", list(VARIANTS))
def test_inference(benchmark, runtime: str, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"optimize batch {batch_size}"
    try:
        scenario = prepared_runtime(runtime)
    except NotImplementedError as exc:  # not applicable here (TensorRT without CUDA)
        pytest.skip(str(exc))
    scenario.step_batch_size = batch_size
    benchmark.pedantic(scenario.step, rounds=20, warmup_rounds=2)
    assert benchmark.stats.stats.min > 0  # the call ran and was timed
    assert scenario.runtime.predict(scenario.workload.batch(batch_size)).shape == (batch_size, 10)
