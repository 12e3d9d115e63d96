"""Prometheus instrumentation for a served model, with bounded label cardinality.

Series: predictions by model version and predicted class, errors by type, a latency
histogram, and gauges fed by the performance monitor (accuracy over the latest labeled
window, predictions still waiting for a label). Every label value comes from a closed set
fixed at construction (unknown classes and error types are counted as "other"), so a bug
or an attacker cannot create unbounded series. The class label is `predicted_class`: a
label named `class` would have to be passed as `.labels(**{"class": c})` because `class`
is a Python keyword.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reference.monitoring.performance import Totals, WindowMetrics

OTHER = "other"
MAX_LABEL_VALUES = 100
# From 0.5 ms (a small model answering from memory) to 5 s (a timeout-sized tail), about
# 2.5x apart, so p50-p99 of a typical CPU model fall in distinct buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ERROR_TYPES = ("bad_input", "model_error", "timeout")


class ModelMetrics:
    def __init__(self, model_version: str, classes: Sequence[str], *, error_types: Sequence[str] = ERROR_TYPES,
                 buckets: Sequence[float] = LATENCY_BUCKETS, registry: CollectorRegistry | None = None,
                 namespace: str = "model") -> None:
        for name, values in (("classes", classes), ("error_types", error_types)):
            if not 0 < len(set(values)) <= MAX_LABEL_VALUES:
                raise ValueError(f"{name} must hold 1 to {MAX_LABEL_VALUES} distinct values, got {len(set(values))}")
        self.model_version = model_version
        self.classes = frozenset(map(str, classes)) | {OTHER}
        self.error_types = frozenset(error_types) | {OTHER}
        self.registry = registry if registry is not None else CollectorRegistry()
        self.predictions = Counter("predictions", "Predictions served, by predicted class.",
                                   ["model_version", "predicted_class"], namespace=namespace, registry=self.registry)
        self.errors = Counter("prediction_errors", "Failed prediction requests, by error type.",
                              ["model_version", "error_type"], namespace=namespace, registry=self.registry)
        self.latency = Histogram("prediction_latency_seconds", "Time to answer a prediction request.",
                                 ["model_version"], buckets=buckets, namespace=namespace, registry=self.registry)
        self.accuracy = Gauge("accuracy", "Accuracy over the latest window of labeled predictions.",
                              ["model_version"], namespace=namespace, registry=self.registry)
        self.unlabeled = Gauge("unlabeled_predictions", "Predictions in the latest window still without a label.",
                               ["model_version"], namespace=namespace, registry=self.registry)
        for value in self.classes:  # every series exists from the start, at zero
            self.predictions.labels(model_version, value)
        for value in self.error_types:
            self.errors.labels(model_version, value)
        self._latency = self.latency.labels(model_version)

    def observe_prediction(self, predicted_class: object, latency_s: float) -> None:
        value = str(predicted_class)
        self.predictions.labels(self.model_version, value if value in self.classes else OTHER).inc()
        self._latency.observe(latency_s)

    def observe_error(self, error_type: str) -> None:
        self.errors.labels(self.model_version, error_type if error_type in self.error_types else OTHER).inc()

    def follow(self, totals: Callable[[], Totals]) -> None:
        """Read the monitor's running totals at every scrape instead of on every request: no
        per-request cost, never stale (accuracy is NaN until a label arrives)."""
        self.accuracy.labels(self.model_version).set_function(lambda: totals().accuracy)
        self.unlabeled.labels(self.model_version).set_function(lambda: totals().unlabeled)

    def observe_window(self, window: WindowMetrics) -> None:
        """Publish one window of the performance monitor (accuracy stays unset until a label arrives)."""
        if window.labeled:
            self.accuracy.labels(self.model_version).set(window.accuracy)
        self.unlabeled.labels(self.model_version).set(window.unlabeled)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
