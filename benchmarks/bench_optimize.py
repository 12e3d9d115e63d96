"""asv benchmarks for the optimisation techniques (the scenarios of reference/optimize):
one inference call of every runtime x precision at batch 1, 8 and 64 on the digits MLP,
and the shipped artefact's size and eval accuracy. TensorRT raises NotImplementedError
(asv's "not applicable") where it or CUDA is missing."""

from __future__ import annotations

from .common import prepared, variants

# Every runtime x precision the optimize scenarios register (the model is fixed to the MLP).
VARIANTS = variants("optimize.*", exclude=("model",))
BATCH_SIZES = [1, 8, 64]


def prepared_runtime(runtime: str):  # type: ignore[no-untyped-def]
    scenario_id, extra = VARIANTS[runtime]
    return prepared(scenario_id, model="mlp", **extra)


class Inference:
    """One call of the runtime on a prepared batch (what the suite's latency metrics time)."""

    params = (list(VARIANTS), BATCH_SIZES)
    param_names = ["runtime", "batch_size"]
    timeout = 600

    def setup(self, runtime: str, batch_size: int) -> None:
        self.scenario = prepared_runtime(runtime)
        self.scenario.step_batch_size = batch_size
        self.scenario.step()  # the first call at this shape (compilation, allocation) is not timed

    def time_infer(self, runtime: str, batch_size: int) -> None:
        self.scenario.step()

    def peakmem_infer(self, runtime: str, batch_size: int) -> None:
        self.scenario.step()


class Artefact:
    """What the runtime ships and what it costs in accuracy on the pinned digits eval split."""

    params = list(VARIANTS)
    param_names = ["runtime"]
    timeout = 600

    def setup(self, runtime: str) -> None:
        self.scenario = prepared_runtime(runtime)

    def track_model_size(self, runtime: str) -> int:
        return self.scenario.runtime.size_bytes

    def track_eval_accuracy(self, runtime: str) -> float:
        from reference.optimize.runtimes import correct_predictions

        split = self.scenario.workload.split
        return float(correct_predictions(self.scenario.runtime, split.x_eval, split.y_eval).float().mean())

    track_model_size.unit = "bytes"  # type: ignore[attr-defined]
    track_eval_accuracy.unit = "fraction"  # type: ignore[attr-defined]
