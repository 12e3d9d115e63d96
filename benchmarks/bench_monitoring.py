"""asv benchmarks for the monitoring techniques (the scenarios of reference/monitoring):
the vectorised drift test against the per-column scipy loop, the validation tables' rates
(track_), and the monitoring cost per prediction. The promtool-checked instrumentation
raises NotImplementedError (asv's "not applicable") where promtool is missing."""

from __future__ import annotations

from .common import axis, prepared

# features, rows per window as the quick profile runs them (the full profile runs 500 x 100k)
DRIFT_SIZES = (axis("monitoring.drift", "features", "quick"), axis("monitoring.drift", "rows", "quick"))


class DriftTest:
    """One KS test of every feature: vectorised, and scipy.stats.ks_2samp per column."""

    params = DRIFT_SIZES
    param_names = ["features", "rows"]
    timeout = 900

    def setup(self, features: int, rows: int) -> None:
        self.scenario = prepared("monitoring.drift", features=features, rows=rows, drifted=0.1)

    def time_vectorised(self, features: int, rows: int) -> None:
        self.scenario.step()

    def time_scipy_loop(self, features: int, rows: int) -> None:
        from reference.monitoring.conformance import scipy_ks_loop

        scipy_ks_loop(self.scenario.reference, self.scenario.current)

    def peakmem_vectorised(self, features: int, rows: int) -> None:
        self.scenario.step()

    def track_speedup(self, features: int, rows: int) -> float:
        """scipy loop time / vectorised time: medians of three samples each, timed side by side
        by the harness's interleaving primitive in the same process."""
        import numpy as np

        from reference.monitoring.conformance import scipy_ks_loop
        from suite import timing
        from suite.profiles import PROFILES

        budget = PROFILES["quick"].model_copy(update={"warmup_calls": 1, "warmup_s": 0.0, "min_samples": 3,
                                                      "max_samples": 3})
        timed = timing.time_interleaved(
            {"scipy": lambda: scipy_ks_loop(self.scenario.reference, self.scenario.current),
             "vectorised": self.scenario.step}, budget)
        return float(np.median(timed["scipy"].times) / np.median(timed["vectorised"].times))

    track_speedup.unit = "ratio"  # type: ignore[attr-defined]


class FalseAlarms:
    """Rate of null windows with any alarm, 200 repetitions of 100-row windows."""

    params = axis("monitoring.drift.fpr", "features")
    param_names = ["features"]
    timeout = 600

    def setup(self, features: int) -> None:
        from reference.monitoring.validation import null_false_alarms

        self.null = null_false_alarms(features, 200, 100, 0.05, seed=0)

    def track_uncorrected(self, features: int) -> float:
        return self.null.any_alarm["none"].value

    def track_bonferroni(self, features: int) -> float:
        return self.null.any_alarm["bonferroni"].value

    def track_bh(self, features: int) -> float:
        return self.null.any_alarm["bh"].value

    track_uncorrected.unit = track_bonferroni.unit = track_bh.unit = "fraction"  # type: ignore[attr-defined]


class Power:
    """Detection rate at the shift each dataset's conformance check names (BH, alpha 0.05)."""

    params = axis("monitoring.drift.power", "dataset")
    param_names = ["dataset"]
    timeout = 600

    def setup(self, dataset: str) -> None:
        from reference.monitoring.scenarios import POWER_DESIGN
        from reference.monitoring.validation import power

        _, _, (shift, window) = POWER_DESIGN[dataset]
        self.points = power(dataset, [shift], [window], 200, 0.05, seed=0)

    def track_power_at_known_shift(self, dataset: str) -> float:
        return self.points[0].detected.value

    track_power_at_known_shift.unit = "fraction"  # type: ignore[attr-defined]


class MonitorOverhead:
    """A batch of predictions through the performance monitor (record + label, 1000) or
    through the instrumented service (model + metrics + JSON log + monitor, 200)."""

    params = ["performance", "instrumentation"]
    param_names = ["monitor"]

    def setup(self, monitor: str) -> None:
        if monitor == "performance":
            self.scenario = prepared("monitoring.performance")
        else:
            self.scenario = prepared("monitoring.prometheus", mode="instrumentation")

    def time_batch(self, monitor: str) -> None:
        self.scenario.step()

    def peakmem_batch(self, monitor: str) -> None:
        self.scenario.step()


class LabelRequest:
    """One /label through the instrumented service with the monitor at its default capacity
    (a million rows): the gauges read O(1) running totals when scraped, so this must not grow
    with the predictions held (issue 12: a window recomputed per label, 6.6 ms)."""

    timeout = 120

    def setup(self) -> None:
        try:
            from reference.monitoring import app, logs, metrics, performance
        except ImportError as exc:  # prometheus_client missing: not applicable here
            raise NotImplementedError(str(exc)) from exc
        from reference.monitoring.scenarios import Discard

        model = app.wine_model()
        self.service = app.PredictionService(model, metrics.ModelMetrics("v1", model.class_names),
                                             logs.PredictionLog(logs.json_logger(Discard(), "mlsuite.bench"), 0.6),
                                             performance.PerformanceMonitor())
        for k in range(1000):
            self.service.predict({"id": f"p{k}", "features": model.mean.tolist()})
        self.calls = 0

    def time_label(self) -> None:
        """Labels cycle over the 1000 predictions: a repeated label is a harmless re-delivery."""
        self.service.label({"id": f"p{self.calls % 1000}", "label": "class_0"})
        self.calls += 1
