"""A small instrumented prediction service: the wine classifier behind the standard library's
HTTP server, with Prometheus metrics, JSON logs and the performance monitor wired in.

    POST /predict {"id": "...", "features": [13 numbers]} -> {"id", "predicted_class", "confidence"}
    POST /label   {"id": "...", "label": "class_1"}        -> {"id"}
    GET  /metrics                                         -> Prometheus text exposition

Bad input gets a 400 and an `error_type="bad_input"` count; the server keeps serving.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST

from reference.monitoring.logs import PredictionLog
from reference.monitoring.metrics import ModelMetrics
from reference.monitoring.performance import PerformanceMonitor


class BadInput(ValueError):
    pass


class NearestCentroid:
    """Standardised nearest-centroid classifier; confidence = softmax of -distance^2 / 2."""

    def __init__(self, x: np.ndarray, y: np.ndarray, class_names: list[str]) -> None:
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0)
        z = (x - self.mean) / self.scale
        self.centroids = np.stack([z[y == k].mean(axis=0) for k in range(len(class_names))])
        self.class_names = class_names

    @property
    def features(self) -> int:
        return self.centroids.shape[1]

    def predict(self, x: np.ndarray) -> tuple[str, float]:
        z = (x - self.mean) / self.scale
        logits = -0.5 * ((self.centroids - z) ** 2).sum(axis=1)
        weights = np.exp(logits - logits.max())
        best = int(np.argmax(weights))
        return self.class_names[best], float(weights[best] / weights.sum())


def wine_model() -> NearestCentroid:
    from sklearn.datasets import load_wine

    data = load_wine()
    return NearestCentroid(data.data, data.target, [str(n) for n in data.target_names])


class PredictionService:
    def __init__(self, model: NearestCentroid, metrics: ModelMetrics, log: PredictionLog,
                 monitor: PerformanceMonitor) -> None:
        self.model, self.metrics, self.log, self.monitor = model, metrics, log, monitor
        self._lock = threading.Lock()  # the monitor is not thread-safe; the HTTP server is threaded

    def predict(self, payload: Any) -> dict[str, Any]:
        started = time.perf_counter()
        prediction_id, features = self._parse(payload)
        predicted, confidence = self.model.predict(features)
        latency = time.perf_counter() - started
        with self._lock:
            self.monitor.record_prediction(prediction_id, predicted, latency, time.time())
        self.metrics.observe_prediction(predicted, latency)
        self.log.prediction(prediction_id, self.metrics.model_version, predicted, confidence, latency)
        return {"id": prediction_id, "predicted_class": predicted, "confidence": confidence}

    def label(self, payload: Any) -> dict[str, Any]:
        if not (isinstance(payload, dict) and isinstance(payload.get("id"), str) and "label" in payload):
            raise BadInput('expected {"id": str, "label": ...}')
        with self._lock:
            self.monitor.record_label(payload["id"], str(payload["label"]))
            self.metrics.observe_window(self.monitor.window())
        return {"id": payload["id"]}

    def _parse(self, payload: Any) -> tuple[str, np.ndarray]:
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise BadInput('expected a JSON object with a string "id"')
        features = payload.get("features")
        if not isinstance(features, list) or len(features) != self.model.features or \
                not all(isinstance(v, int | float) and not isinstance(v, bool) for v in features):
            raise BadInput(f'"features" must be a list of {self.model.features} numbers')
        values = np.asarray(features, dtype=np.float64)
        if not np.isfinite(values).all():
            raise BadInput('"features" must be finite')
        return payload["id"], values


def _handler(service: PredictionService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
            if self.path != "/metrics":
                return self._send(404, b'{"error": "not found"}')
            self._send(200, service.metrics.exposition(), CONTENT_TYPE_LATEST)

        def do_POST(self) -> None:  # noqa: N802
            route = {"/predict": service.predict, "/label": service.label}.get(self.path)
            if route is None:
                return self._send(404, b'{"error": "not found"}')
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = route(json.loads(self.rfile.read(length) or b"null"))
            except (BadInput, json.JSONDecodeError, ValueError) as exc:
                service.metrics.observe_error("bad_input")
                return self._send(400, json.dumps({"error": str(exc)}).encode())
            except Exception as exc:  # noqa: BLE001 - any model failure is a 500, and the server keeps serving
                service.metrics.observe_error("model_error")
                return self._send(500, json.dumps({"error": type(exc).__name__}).encode())
            self._send(200, json.dumps(body).encode())

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - access logs go to the JSON log instead
            return None

    return Handler


@dataclass
class RunningServer:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def serve(service: PredictionService, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve in a background thread (port 0: any free port; see `address`)."""
    server = ThreadingHTTPServer((host, port), _handler(service))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="prediction-service", daemon=True)
    thread.start()
    return RunningServer(server, thread)
