"""Integration: the instrumented app on loopback, a real Prometheus server (random free
port, its own temporary config and data directory) scraping it, and the counters read back
through Prometheus' HTTP query API. Every process started here is stopped here."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("sklearn")

from reference.monitoring import app, conformance, logs, metrics, performance, promserver  # noqa: E402
from reference.monitoring.roundtrip import run_roundtrip  # noqa: E402
from tests.conftest import requires_binary  # noqa: E402

pytestmark = [pytest.mark.serving, requires_binary("prometheus")]


def service(metrics_class: type[metrics.ModelMetrics] = metrics.ModelMetrics) -> app.PredictionService:
    model = app.wine_model()
    return app.PredictionService(model, metrics_class("v1", model.class_names),
                                 logs.PredictionLog(logs.json_logger(io.StringIO(), "test.server"), 0.6),
                                 performance.PerformanceMonitor(capacity=1000))


def rows(count: int) -> np.ndarray:
    from sklearn.datasets import load_wine

    return load_wine().data[:count]


def test_counters_read_back_from_prometheus_equal_requests_made() -> None:
    result = run_roundtrip(service(), rows(40), bad_requests=3)
    found = conformance.counters_equal(result.read, result.made, "Prometheus HTTP query API")
    assert all(c.passed for c in found), [c.detail for c in found]
    assert result.read == {"predictions_total": 40.0, "errors_total": 3.0, "latency_count": 40.0}
    assert all(c.passed for c in conformance.exposition_valid(result.exposition, ["model_predictions"]))


class CountsTwice(metrics.ModelMetrics):
    """Planted bug: every prediction is counted twice (a retry path observing again)."""

    def observe_prediction(self, predicted_class: object, latency_s: float) -> None:
        super().observe_prediction(predicted_class, latency_s)
        super().observe_prediction(predicted_class, latency_s)


@pytest.mark.breaks("prometheus.<counter>_equals_events")
def test_counter_check_catches_double_counting_through_prometheus() -> None:
    result = run_roundtrip(service(CountsTwice), rows(10), bad_requests=0)
    found = {c.name: c.passed for c in conformance.counters_equal(result.read, result.made, "Prometheus")}
    assert not found["prometheus.predictions_total_equals_events"]
    assert not found["prometheus.latency_count_equals_events"] and found["prometheus.errors_total_equals_events"]


def test_prometheus_that_cannot_start_is_a_clear_error_and_leaves_nothing_behind() -> None:
    server = promserver.PrometheusServer(["127.0.0.1:1"], binary="promtool")  # exits: unknown flags
    try:
        with pytest.raises(promserver.PrometheusError, match="exited with"):
            server.start()
        assert server._process is None and server._workdir is None
    finally:
        server.stop()
    with pytest.raises(promserver.PrometheusError, match="not on PATH"):
        promserver.PrometheusServer([], binary="no-such-prometheus").start()
