"""A small instrumented prediction service: the wine classifier behind the standard library's
HTTP server, with Prometheus metrics, JSON logs and the performance monitor wired in.

    POST /predict {"id": "...", "features": [13 numbers]} -> {"id", "predicted_class", "confidence"}
    POST /label   {"id": "...", "label": "class_1"}        -> {"id"}
    GET  /metrics                                         -> Prometheus text exposition
    GET  /openapi.json                                    -> the OpenAPI document (every answer below)

Bad input gets a 4xx with a JSON `{"error": ...}` and an `error_type="bad_input"` count, and
the server keeps serving: 400 for a malformed body (also NaN/Infinity, nesting past Python's
recursion limit, features beyond +-FEATURE_LIMIT such as 10**400), 409 for a prediction id
seen before or a second, different label, 411 without a Content-Length, 413 above
`max_body_bytes` (the body is not read), 415 for a non-JSON Content-Type, 408 when headers and
body have not arrived within `read_timeout_s` (one deadline for the whole request, so a short
body, a lying Content-Length or a trickling client frees its thread in bounded time), 404 and
405 for unknown paths and methods. The accuracy and unlabeled gauges read the monitor's
running totals (O(1)) when scraped; no request recomputes a window over every prediction held.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST

from reference.monitoring.logs import PredictionLog
from reference.monitoring.metrics import ModelMetrics
from reference.monitoring.openapi import openapi_document
from reference.monitoring.performance import Conflict, PerformanceMonitor, Totals

MAX_BODY_BYTES = 64 * 1024  # a prediction is ~300 bytes
READ_TIMEOUT_S = 5.0
FEATURE_LIMIT = 1e100  # |feature| above this could overflow the squared distance in float64
LINGER_S = 1.0  # after refusing a body unread, how long to drain it so the client sees the answer
_DIGITS = re.compile(r"[0-9]{1,18}")


class BadInput(ValueError):
    pass


class Refused(Exception):
    """An HTTP-level refusal (before or while the body is read)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        metrics.follow(self.totals)

    def totals(self) -> Totals:
        """The monitor's running totals (O(1)), read by the gauges at every scrape."""
        with self._lock:
            return self.monitor.totals()

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
        if not (isinstance(payload, dict) and isinstance(payload.get("id"), str)
                and payload.get("label") in self.model.class_names):
            raise BadInput(f'expected {{"id": str, "label": one of {self.model.class_names}}}')
        with self._lock:
            self.monitor.record_label(payload["id"], payload["label"])
        return {"id": payload["id"]}

    def _parse(self, payload: Any) -> tuple[str, np.ndarray]:
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise BadInput('expected a JSON object with a string "id"')
        features = payload.get("features")
        if not isinstance(features, list) or len(features) != self.model.features or \
                not all(isinstance(v, int | float) and not isinstance(v, bool) for v in features):
            raise BadInput(f'"features" must be a list of {self.model.features} numbers')
        if not all(-FEATURE_LIMIT <= v <= FEATURE_LIMIT for v in features):  # exact for huge integers too
            raise BadInput(f'"features" must be finite numbers within +-{FEATURE_LIMIT:g}')
        return payload["id"], np.array(features, dtype=np.float64)


def decode_json(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, bounded nesting, valid UTF-8; anything else is BadInput."""
    def refuse(constant: str) -> Any:
        raise BadInput(f"{constant} is not JSON")

    try:
        return json.loads(body, parse_constant=refuse)
    except RecursionError:
        raise BadInput("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        if isinstance(exc, BadInput):
            raise
        raise BadInput(f"body is not valid JSON: {exc}") from None


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline: every recv waits at most until it."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock, self.deadline = sock, time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received within the read timeout")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


def _handler(service: PredictionService, max_body_bytes: int, read_timeout_s: float) -> type[BaseHTTPRequestHandler]:
    document = json.dumps(openapi_document(service.model.features, service.model.class_names, max_body_bytes,
                                           read_timeout_s, FEATURE_LIMIT)).encode()
    gets: dict[str, Callable[[], tuple[bytes, str]]] = {
        "/metrics": lambda: (service.metrics.exposition(), CONTENT_TYPE_LATEST),
        "/openapi.json": lambda: (document, "application/json"),
    }
    posts: dict[str, Callable[[Any], dict[str, Any]]] = {"/predict": service.predict, "/label": service.label}

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout_s  # writes; reads share the request's deadline (setup)

        def setup(self) -> None:
            super().setup()
            self.reader = _DeadlineReader(self.connection, read_timeout_s)
            self.rfile = io.BufferedReader(self.reader)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
            answer = gets.get(self._route())
            if answer is None:
                return self._not_served()
            self._send(HTTPStatus.OK, *answer())

        def do_POST(self) -> None:  # noqa: N802
            route = posts.get(self._route())
            if route is None:
                return self._not_served()
            try:
                payload = decode_json(self._body())
                answer = route(payload)
            except Refused as exc:  # the body may be unread: drain it, unless it timed out
                service.metrics.observe_error("bad_input")
                return self._error(exc.status, str(exc), drain=exc.status != HTTPStatus.REQUEST_TIMEOUT)
            except Conflict as exc:  # a duplicate prediction id, a second different label
                service.metrics.observe_error("bad_input")
                return self._error(HTTPStatus.CONFLICT, str(exc))
            except ValueError as exc:  # BadInput
                service.metrics.observe_error("bad_input")
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except Exception as exc:  # noqa: BLE001 - any model failure is a 500, and the server keeps serving
                service.metrics.observe_error("model_error")
                return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, type(exc).__name__)
            self._send(HTTPStatus.OK, json.dumps(answer).encode())

        def __getattr__(self, name: str) -> Any:
            """Any other method (PUT, DELETE, HEAD, ...): 405 or 404, never the stdlib's 501."""
            if name.startswith("do_"):
                return self._not_served
            raise AttributeError(name)

        def _route(self) -> str:
            return urlsplit(self.path).path

        def _not_served(self) -> None:
            path = self._route()
            allowed = "GET" if path in gets else "POST" if path in posts else None
            if allowed is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no such path: {path}", drain=True)
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} answers {allowed} only", {"Allow": allowed}, drain=True)

        def _body(self) -> bytes:
            """The declared body, checked before a byte of it is read."""
            if self.headers.get_content_type() != "application/json":
                raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                              f"Content-Type must be application/json, got {self.headers.get('Content-Type')!r}")
            if "Transfer-Encoding" in self.headers:
                raise Refused(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not accepted; send Content-Length")
            declared = self.headers.get_all("Content-Length", [])
            if not declared:
                raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            if len(set(declared)) != 1 or not _DIGITS.fullmatch(declared[0].strip()):
                raise Refused(HTTPStatus.BAD_REQUEST, f"Content-Length must be one non-negative integer: {declared}")
            length = int(declared[0])
            if length > max_body_bytes:
                raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"body of {length} bytes is over the limit of {max_body_bytes}")
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"body not received within {read_timeout_s:g} s") from None
            if len(body) < length:
                raise Refused(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes")
            return body

        def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None, *,
                   drain: bool = False) -> None:
            self._send(status, json.dumps({"error": message}).encode(), headers=headers)
            if drain:
                self._drain()

        def _drain(self) -> None:
            """Read and drop what the client still sends, for at most LINGER_S: closing a socket
            with unread data resets the connection, and the client would lose the answer."""
            if self.headers.get("Content-Length", "0").strip() == "0" and "Transfer-Encoding" not in self.headers:
                return
            self.reader.deadline = min(self.reader.deadline, time.monotonic() + LINGER_S)
            try:
                self.connection.shutdown(socket.SHUT_WR)
                while self.rfile.read1(65536):
                    pass
            except OSError:  # TimeoutError included: the client keeps sending, give up on it
                pass

        def _send(self, status: HTTPStatus, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.connection.settimeout(read_timeout_s)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
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


def serve(service: PredictionService, host: str = "127.0.0.1", port: int = 0, *,
          max_body_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = READ_TIMEOUT_S) -> RunningServer:
    """Serve in a background thread (port 0: any free port; see `address`)."""
    server = ThreadingHTTPServer((host, port), _handler(service, max_body_bytes, read_timeout_s))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="prediction-service", daemon=True)
    thread.start()
    return RunningServer(server, thread)
