"""End to end: requests to the instrumented app on loopback, a real Prometheus server
scraping it, and the counters read back through Prometheus' HTTP query API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from reference.monitoring.app import PredictionService, serve
from reference.monitoring.promserver import PrometheusServer

QUERIES = {
    "predictions_total": "sum(model_predictions_total)",
    "errors_total": "sum(model_prediction_errors_total)",
    "latency_count": "sum(model_prediction_latency_seconds_count)",
}


@dataclass(frozen=True)
class Roundtrip:
    made: dict[str, float]  # what the client did
    read: dict[str, float | None]  # what Prometheus says
    exposition: bytes
    request_seconds: list[float]  # client-side time per good request
    prometheus_start_s: float
    low_confidence: int  # good requests answered below the service's low-confidence threshold


def post(url: str, body: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON body)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def run_roundtrip(service: PredictionService, rows: np.ndarray, bad_requests: int) -> Roundtrip:
    """One good request per row, then `bad_requests` malformed ones; counters read back after
    a scrape that started once the last request was answered."""
    server = serve(service)
    url = f"http://{server.address}/predict"
    try:
        started = time.perf_counter()
        with PrometheusServer([server.address]) as prometheus:
            prometheus_start = time.perf_counter() - started
            seconds, low_confidence = [], 0
            for i, row in enumerate(rows):
                sent = time.perf_counter()
                status, answer = post(url, json.dumps({"id": f"r{i}", "features": row.tolist()}).encode())
                seconds.append(time.perf_counter() - sent)
                if status != 200:
                    raise RuntimeError(f"good request {i} got HTTP {status}: {answer}")
                low_confidence += answer["confidence"] < service.log.low_confidence
            statuses = [post(url, b'{"id": "bad", "features": "not a list"}')[0] for _ in range(bad_requests)]
            if any(status != 400 for status in statuses):
                raise RuntimeError(f"malformed requests got {sorted(set(statuses))}, expected 400")
            prometheus.wait_for_scrape_after(time.time())
            read = {name: prometheus.value(query) for name, query in QUERIES.items()}
        exposition = service.metrics.exposition()
    finally:
        server.stop()
    made = {"predictions_total": float(len(rows)), "errors_total": float(bad_requests),
            "latency_count": float(len(rows))}
    return Roundtrip(made, read, exposition, seconds, prometheus_start, low_confidence)
