"""asv benchmarks for the trackers (the scenarios of reference/tracking)."""

from __future__ import annotations

from .common import prepared, variants

# Every tracker and mode the tracking scenarios register, at each metrics-per-step of their grid.
POINTS = variants("tracking.*")


class LogStep:
    """Logging one step of metrics to an open run."""

    params = list(POINTS)
    param_names = ["point"]
    timeout = 300

    def setup(self, point: str) -> None:
        scenario_id, options = POINTS[point]
        self.scenario = prepared(scenario_id, **options)

    def teardown(self, point: str) -> None:
        if hasattr(self, "scenario"):  # setup raised NotImplementedError: nothing was opened
            self.scenario.tracker.finish()

    def time_log_step(self, point: str) -> None:
        self.scenario.step()
