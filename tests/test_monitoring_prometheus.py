"""Prometheus instrumentation and JSON logs: valid exposition (promtool and the client
parser), bounded cardinality, counters equal events, every log line parses; each check fed
a planted bug."""

from __future__ import annotations

import io
import json
import logging

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from reference.monitoring import conformance  # noqa: E402
from reference.monitoring.logs import PredictionLog, json_logger  # noqa: E402
from reference.monitoring.metrics import ModelMetrics  # noqa: E402
from reference.monitoring.performance import PerformanceMonitor  # noqa: E402
from tests.conftest import requires_binary  # noqa: E402

FAMILIES = ("model_predictions", "model_prediction_errors", "model_prediction_latency_seconds",
            "model_accuracy", "model_unlabeled_predictions")
CLASSES = ["setosa", "versicolor", "virginica"]


def samples(metrics: ModelMetrics) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}


def instrumented(predictions: int = 30) -> ModelMetrics:
    metrics = ModelMetrics("v7", CLASSES)
    for k in range(predictions):
        metrics.observe_prediction(CLASSES[k % 3], latency_s=0.0004 * (k + 1))
    metrics.observe_error("bad_input")
    monitor = PerformanceMonitor(capacity=100)
    for k in range(4):
        monitor.record_prediction(f"p{k}", "a", 0.01, float(k))
    monitor.record_label("p0", "a")
    metrics.observe_window(monitor.window())
    return metrics


def test_counters_histogram_and_gauges_hold_what_was_observed() -> None:
    values = samples(instrumented(30))
    version = ("model_version", "v7")
    assert values[("model_predictions_total", (version, ("predicted_class", "setosa")))] == 10
    assert values[("model_predictions_total", (version, ("predicted_class", "other")))] == 0
    assert values[("model_prediction_errors_total", (("error_type", "bad_input"), version))] == 1
    assert values[("model_prediction_latency_seconds_count", (version,))] == 30
    assert values[("model_prediction_latency_seconds_bucket", (("le", "0.005"), version))] == 12
    assert values[("model_accuracy", (version,))] == 1.0
    assert values[("model_unlabeled_predictions", (version,))] == 3


def test_label_cardinality_is_bounded() -> None:
    metrics = ModelMetrics("v1", CLASSES)
    for k in range(500):
        metrics.observe_prediction(f"made-up-{k}", 0.001)
        metrics.observe_error(f"Error{k}")
    predicted = {labels for name, labels in samples(metrics) if name == "model_predictions_total"}
    errors = {labels for name, labels in samples(metrics) if name == "model_prediction_errors_total"}
    assert len(predicted) == 4 and len(errors) == 4  # the declared values plus "other"
    assert samples(metrics)[("model_predictions_total", (("model_version", "v1"), ("predicted_class", "other")))] == 500
    with pytest.raises(ValueError, match="1 to 100"):
        ModelMetrics("v1", [str(k) for k in range(101)])


@pytest.mark.breaks("prometheus.<counter>_equals_events")
def test_counters_equal_check_and_its_planted_bug() -> None:
    metrics = instrumented(30)
    counted = samples(metrics)
    total = sum(v for (name, _), v in counted.items() if name == "model_predictions_total")
    assert all(c.passed for c in conformance.counters_equal({"predictions_total": total},
                                                            {"predictions_total": 30}, "test"))

    class CountsTwice(ModelMetrics):
        """Planted bug: a retry path observes the same prediction again."""

        def observe_prediction(self, predicted_class: object, latency_s: float) -> None:
            super().observe_prediction(predicted_class, latency_s)
            super().observe_prediction(predicted_class, latency_s)

    broken = CountsTwice("v7", CLASSES)
    for k in range(30):
        broken.observe_prediction(CLASSES[k % 3], 0.001)
    doubled = sum(v for (name, _), v in samples(broken).items() if name == "model_predictions_total")
    assert not conformance.counters_equal({"predictions_total": doubled}, {"predictions_total": 30}, "test")[0].passed


@requires_binary("promtool")
def test_exposition_valid_for_promtool_and_parser() -> None:
    found = conformance.exposition_valid(instrumented().exposition(), FAMILIES)
    assert [c.passed for c in found] == [True, True], [c.detail for c in found]


@requires_binary("promtool")
@pytest.mark.parametrize(("exposition", "failing"), [
    # a counter without the _total suffix: promtool's lint rejects it
    (b"# HELP model_predictions Predictions.\n# TYPE model_predictions counter\nmodel_predictions 3\n",
     {"prometheus.promtool_check_metrics", "prometheus.client_parser_parses"}),
    # a label value without quotes: not the text format at all
    (b'# TYPE model_predictions_total counter\nmodel_predictions_total{model_version=v1} 3\n',
     {"prometheus.promtool_check_metrics", "prometheus.client_parser_parses"}),
])
@pytest.mark.breaks("prometheus.client_parser_parses", "prometheus.promtool_check_metrics")
def test_exposition_check_catches_planted_bug(exposition: bytes, failing: set[str]) -> None:
    found = {c.name: c.passed for c in conformance.exposition_valid(exposition, FAMILIES)}
    assert {name for name, passed in found.items() if not passed} == failing


def test_prediction_logs_are_json_lines_with_low_confidence_warnings() -> None:
    stream = io.StringIO()
    log = PredictionLog(json_logger(stream, "test.predictions"), low_confidence=0.6)
    confidences = [0.9, 0.55, 0.7, float("nan"), 0.1]
    for k, confidence in enumerate(confidences):
        log.prediction(f"p{k}", "v7", "setosa", confidence, 0.002, note='multi\nline "quoted"')
    found = conformance.json_log_valid(stream.getvalue(), predictions=5, low_confidence=3)
    assert all(c.passed for c in found), [c.detail for c in found]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warning = next(line for line in lines if line["event"] == "low_confidence")
    assert warning["level"] == "warning" and warning["threshold"] == 0.6 and warning["prediction_id"] == "p1"
    assert lines[0]["time"].endswith("Z") and lines[0]["note"] == 'multi\nline "quoted"'
    assert any(line["confidence"] is None for line in lines)  # NaN became null, still valid JSON


@pytest.mark.breaks("logs.every_line_is_a_json_object", "logs.low_confidence_warnings", "logs.one_event_per_prediction")
def test_log_check_catches_planted_bugs() -> None:
    stream = io.StringIO()
    plain = logging.getLogger("test.plain")
    plain.handlers.clear()
    plain.addHandler(logging.StreamHandler(stream))  # planted bug: plain text, not JSON
    plain.propagate = False
    PredictionLog(plain, 0.6).prediction("p0", "v7", "setosa", 0.2, 0.001)
    assert not conformance.json_log_valid(stream.getvalue(), 1, 1)[0].passed

    class NeverWarns(PredictionLog):
        """Planted bug: the low-confidence event is never written."""

        def prediction(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            self.low_confidence = 0.0
            super().prediction(*args, **kwargs)

    stream = io.StringIO()
    NeverWarns(json_logger(stream, "test.silent"), 0.6).prediction("p0", "v7", "setosa", 0.2, 0.001)
    found = {c.name: c.passed for c in conformance.json_log_valid(stream.getvalue(), 1, 1)}
    assert found == {"logs.every_line_is_a_json_object": True, "logs.one_event_per_prediction": True,
                     "logs.low_confidence_warnings": False}
