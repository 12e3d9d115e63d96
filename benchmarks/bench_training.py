"""asv benchmarks for the training techniques (the scenarios of reference/training)."""

from __future__ import annotations

from .common import axis, prepared, variants

# Each technique as the quick profile runs it (every AMP dtype), on every model of the grid.
TECHNIQUES = variants("training.*", "quick", exclude=("model",))
MODELS = axis("training.baseline", "model")


class TrainingStep:
    """One optimiser step of each technique at the quick profile's batch size."""

    params = (list(TECHNIQUES), MODELS)
    param_names = ["technique", "model"]

    def setup(self, technique: str, model: str) -> None:
        import torch

        torch.set_num_threads(2)
        scenario_id, extra = TECHNIQUES[technique]
        self.scenario = prepared(scenario_id, model=model, **extra)

    def time_step(self, technique: str, model: str) -> None:
        self.scenario.step()

    def peakmem_step(self, technique: str, model: str) -> None:
        self.scenario.step()


class TrainingAccuracy:
    """Digits eval accuracy of the fp32 recipe (a regression here is a correctness bug)."""

    params = ["mlp", "cnn"]
    param_names = ["model"]
    timeout = 300

    def track_eval_accuracy(self, model: str) -> float:
        from reference.training import conformance, workloads

        workload = workloads.build(model, "small")
        run = conformance.train_to_convergence(workload, conformance.fp32_step_factory, epochs=10)
        return float(run.correct.float().mean())

    track_eval_accuracy.unit = "fraction"  # type: ignore[attr-defined]
