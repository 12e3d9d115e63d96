"""asv benchmarks for the training techniques (the scenarios of reference/training)."""

from __future__ import annotations

from .common import prepared

MODELS = ["mlp", "cnn", "transformer"]


class TrainingStep:
    """One optimiser step of each technique at the quick profile's batch size."""

    params = (["training.baseline", "training.amp", "training.accumulation"], MODELS)
    param_names = ["scenario", "model"]

    def setup(self, scenario_id: str, model: str) -> None:
        import torch

        torch.set_num_threads(2)
        extra = {"dtype": "bf16"} if scenario_id == "training.amp" else {}
        self.scenario = prepared(scenario_id, model=model, **extra)

    def time_step(self, scenario_id: str, model: str) -> None:
        self.scenario.step()

    def peakmem_step(self, scenario_id: str, model: str) -> None:
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
