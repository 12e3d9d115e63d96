"""asv benchmarks for the trackers (the scenarios of reference/tracking)."""

from __future__ import annotations

from .common import prepared

POINTS = {"mlflow-sync": ("tracking.mlflow", {"synchronous": True}),
          "mlflow-async": ("tracking.mlflow", {"synchronous": False}),
          "tensorboard": ("tracking.tensorboard", {}), "wandb": ("tracking.wandb", {})}


class LogStep:
    """Logging one step of ten metrics to an open run."""

    params = (list(POINTS), [1, 10])
    param_names = ["tracker", "metrics_per_step"]
    timeout = 300

    def setup(self, tracker: str, metrics_per_step: int) -> None:
        scenario_id, options = POINTS[tracker]
        self.scenario = prepared(scenario_id, metrics_per_step=metrics_per_step, **options)

    def teardown(self, tracker: str, metrics_per_step: int) -> None:
        self.scenario.tracker.finish()

    def time_log_step(self, tracker: str, metrics_per_step: int) -> None:
        self.scenario.step()
