"""The instrumented app as a real server on 127.0.0.1, fed what breaks naive servers: numbers
float64 cannot hold, deep nesting, lying or missing Content-Length, short, slow and huge
bodies, wrong media types, methods and paths. Every one gets a 4xx, in bounded time, and the
server keeps serving; then schemathesis fuzzes its OpenAPI document for 5xx and for answers
the document does not list."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("sklearn")

from reference.monitoring import app, logs, metrics, performance  # noqa: E402

pytestmark = pytest.mark.serving
READ_TIMEOUT_S = 1.0
FEATURES = 13


def service() -> app.PredictionService:
    model = app.wine_model()
    return app.PredictionService(model, metrics.ModelMetrics("v1", model.class_names),
                                 logs.PredictionLog(logs.json_logger(io.StringIO(), "test.app"), 0.6),
                                 performance.PerformanceMonitor(capacity=1000))


@pytest.fixture(scope="module")
def running() -> Iterator[app.RunningServer]:
    server = app.serve(service(), read_timeout_s=READ_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


def raw(address: str, request: bytes, *, hold_open: bool = False, pause_s: float = 0.0,
        trickle: bytes = b"") -> tuple[int, dict[str, str], bytes, float]:
    """Send bytes as they are (no client library fixing them up): status, headers, body and
    seconds until the answer. `trickle` is sent a byte at a time, `pause_s` apart."""
    host, port = address.rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        for byte in trickle:
            time.sleep(pause_s)
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server gave up on us: read its answer
                break
        if not hold_open and not trickle:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body, time.monotonic() - started


def post(path: str, body: bytes, content_type: str = "application/json", length: str | None = None) -> bytes:
    declared = str(len(body)) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode() + body


def features(value: Any) -> bytes:
    return b'{"id": "x", "features": [' + b", ".join([str(value).encode()] * FEATURES) + b"]}"


def good_prediction(running: app.RunningServer, prediction_id: str) -> dict:
    from sklearn.datasets import load_wine

    body = json.dumps({"id": prediction_id, "features": load_wine().data[0].tolist()}).encode()
    status, _, answer, _ = raw(running.address, post("/predict", body))
    assert status == 200, answer
    return json.loads(answer)


BAD_BODIES = {
    "integer beyond float64 (10**400)": features(10**400),
    "float literal beyond float64 (1e400)": features("1e400"),
    "NaN": features("NaN"),
    "Infinity": features("-Infinity"),
    "finite but beyond the documented range": features("1e300"),
    "nested 30 000 deep": b"[" * 30_000 + b"]" * 30_000,
    "invalid UTF-8": b'{"id": "\xff\xfe", "features": []}',
    "integer with 5000 digits": b'{"id": "x", "features": [' + b"9" * 5000 + b"]}",
    "not an object": b"[1, 2, 3]",
    "empty": b"",
    "features not a list": b'{"id": "x", "features": "abc"}',
    "booleans as features": features("true"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_malformed_or_overflowing_bodies_get_400_with_a_reason(running: app.RunningServer, name: str) -> None:
    status, headers, body, _ = raw(running.address, post("/predict", BAD_BODIES[name]))
    assert status == 400, (name, body)
    assert headers["Content-Type"] == "application/json" and json.loads(body)["error"]


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (post("/predict", features(1), length="-1"), 400, "non-negative integer"),
    (post("/predict", features(1), length="+5"), 400, "non-negative integer"),
    (post("/predict", features(1), length="0x10"), 400, "non-negative integer"),
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n{}",
     400, "one non-negative integer"),
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\n\r\n" + features(1), 411, "Content-Length"),
    (b"POST /predict HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\n{}\r\n0\r\n\r\n", 411, "Transfer-Encoding"),
    (post("/predict", features(1), content_type="text/plain"), 415, "application/json"),
    (post("/label", b"id=x&label=class_0", content_type="application/x-www-form-urlencoded"), 415, "application/json"),
    (post("/predict", b"", length="50000000"), 413, "over the limit"),
    (post("/label", b'{"id": "x", "label": "no such class"}'), 400, "one of"),
    (post("/label", b'{"id": "x", "label": 1}'), 400, "one of"),
    (post("/nope", b"{}"), 404, "no such path"),
    (b"GET /predict HTTP/1.1\r\n\r\n", 405, "POST only"),
    (b"DELETE /label HTTP/1.1\r\n\r\n", 405, "POST only"),
    (b"HEAD /metrics HTTP/1.1\r\n\r\n", 405, None),  # a HEAD answer has no body
    (b"PUT /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405, "GET only"),
    (b"BREW /metrics HTTP/1.1\r\n\r\n", 405, "GET only"),
])
def test_http_level_refusals_are_4xx_and_immediate(running: app.RunningServer, request_bytes: bytes, status: int,
                                                   reason: str | None) -> None:
    got, headers, body, seconds = raw(running.address, request_bytes, hold_open=True)
    assert got == status, body
    assert seconds < READ_TIMEOUT_S  # answered without waiting for a body that never comes
    if reason is not None:
        assert reason in json.loads(body)["error"]
    if status == 405:
        assert headers["Allow"] in {"GET", "POST"}


def test_a_short_body_is_answered_408_at_the_read_timeout(running: app.RunningServer) -> None:
    status, _, body, seconds = raw(running.address, post("/predict", b'{"id": "x"', length="500"), hold_open=True)
    assert status == 408 and "within" in json.loads(body)["error"]
    assert READ_TIMEOUT_S * 0.9 < seconds < READ_TIMEOUT_S + 2


def test_a_trickling_body_cannot_hold_a_thread_past_the_deadline(running: app.RunningServer) -> None:
    """One byte every 0.2 s would take 6 s; the whole request shares one 1 s deadline."""
    body = features(1)[:30]
    status, _, _, seconds = raw(running.address, post("/predict", b"", length=str(len(body))),
                                trickle=body, pause_s=0.2)
    assert status == 408 and seconds < READ_TIMEOUT_S + 2


def test_slow_headers_are_dropped_at_the_deadline(running: app.RunningServer) -> None:
    started = time.monotonic()
    with socket.create_connection(tuple(running.server.server_address[:2]), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\n")
        for _ in range(30):
            time.sleep(0.2)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert sock.recv(65536) == b""  # closed, no answer: the request never finished arriving
    assert time.monotonic() - started < READ_TIMEOUT_S + 2


def test_a_50_mb_body_is_refused_unread_and_the_client_sees_the_413(running: app.RunningServer) -> None:
    body = b"[" + b"1," * 25_000_000 + b"1]"
    request = urllib.request.Request(f"http://{running.address}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and "over the limit" in json.loads(refused.value.read())["error"]


def test_threads_are_freed_and_the_server_keeps_serving(running: app.RunningServer) -> None:
    before = threading.active_count()
    slow = [threading.Thread(target=raw, args=(running.address, post("/predict", b"{", length="99")),
                             kwargs={"hold_open": True}) for _ in range(8)]
    for thread in slow:
        thread.start()
    for thread in slow:
        thread.join(timeout=READ_TIMEOUT_S + 5)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    assert good_prediction(running, "still-serving")["predicted_class"] == "class_0"


def test_errors_are_counted_and_gauges_read_the_totals_when_scraped() -> None:
    server = app.serve(service(), read_timeout_s=READ_TIMEOUT_S)
    try:
        for k in range(4):
            good_prediction(server, f"p{k}")
        raw(server.address, post("/predict", features("NaN")))
        raw(server.address, post("/predict", b"{}", content_type="text/plain"))
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5) as response:
            before_labels = response.read().decode()
        for k, label in enumerate(["class_0", "class_0", "class_1"]):
            status, _, _, _ = raw(server.address, post("/label", json.dumps({"id": f"p{k}", "label": label}).encode()))
            assert status == 200
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    assert 'model_unlabeled_predictions{model_version="v1"} 4.0' in before_labels  # read when scraped
    assert 'model_accuracy{model_version="v1"} NaN' in before_labels
    assert 'model_prediction_errors_total{error_type="bad_input",model_version="v1"} 2.0' in text
    assert 'model_accuracy{model_version="v1"} 0.6666666666666666' in text  # 2 of 3 labels are class_0
    assert 'model_unlabeled_predictions{model_version="v1"} 1.0' in text


def test_label_never_recomputes_a_window() -> None:
    """The cost of /label must not grow with the predictions held (it recomputed a window
    over all of them under the lock: 6.6 ms at a million); the gauges read O(1) totals."""
    svc = service()
    svc.monitor = performance.PerformanceMonitor(capacity=200_000)
    svc.monitor.window = None  # type: ignore[method-assign] - any call fails the test
    for k in range(200):
        svc.monitor.record_prediction(f"p{k}", "class_0", 0.001, float(k))
    assert svc.label({"id": "p1", "label": "class_0"}) == {"id": "p1"}
    assert b'model_accuracy{model_version="v1"} 1.0' in svc.metrics.exposition()


# ---- schemathesis over the document the app serves ----------------------------------------

def fuzz(base: str, max_examples: int) -> tuple[int, int, list[str]]:
    """Every operation, schema-valid data for all and schema-invalid data for the POSTs, each
    answer validated: no 5xx, status listed in the document, content type and body as it says,
    invalid data refused and valid data accepted (a 409 for a repeated id counts as accepted)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks
    from schemathesis.errors import FailureGroup
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    validations = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                   checks.response_schema_conformance, checks.negative_data_rejection,
                   checks.positive_data_acceptance]
    failures: list[str] = []
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    plans = [(op, GenerationMode.POSITIVE) for op in operations]
    plans += [(op, GenerationMode.NEGATIVE) for op in operations if op.method.upper() == "POST"]
    for operation, mode in plans:

        @settings(max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def one(case: Any) -> None:
            nonlocal calls
            calls += 1
            try:
                case.call_and_validate(base_url=base, checks=validations, timeout=10)
            except (Exception, FailureGroup) as exc:  # noqa: BLE001 - collect every failure, not the first
                failures.append(f"{case.method} {case.path} ({mode.name}): {str(exc)[:300]}")  # noqa: B023 - run now

        one()
    return len(operations), calls, failures


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(running: app.RunningServer) -> None:
    pytest.importorskip("schemathesis")
    operations, calls, failures = fuzz(f"http://{running.address}", max_examples=60)
    assert operations == 3 and calls >= 200  # schemathesis leaves out the document's own path
    assert not failures, failures[:5]
    assert good_prediction(running, "after-fuzz")["predicted_class"] == "class_0"


def test_document_lists_every_refusal_the_app_gives(running: app.RunningServer) -> None:
    with urllib.request.urlopen(f"http://{running.address}/openapi.json", timeout=5) as response:
        document = json.load(response)
    for path in ("/predict", "/label"):
        assert {"200", "400", "408", "411", "413", "415"} <= set(document["paths"][path]["post"]["responses"])
    assert {"NotFound", "MethodNotAllowed"} <= set(document["components"]["responses"])
    items = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert items["properties"]["features"]["minItems"] == FEATURES


class CrashesOnLongIds(app.PredictionService):
    """Planted bug: an unexpected exception (a 500) for ids longer than three characters."""

    def predict(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, dict) and len(str(payload.get("id", ""))) > 3:
            raise KeyError("planted")
        return super().predict(payload)


class AcceptsAnyLabel(app.PredictionService):
    """Planted bug: any JSON value is taken as a label (schema-invalid bodies answered 200)."""

    def label(self, payload: Any) -> dict[str, Any]:
        with self._lock:
            self.monitor.record_label(str(payload), str(payload))
        return {"id": "any"}


@pytest.mark.slow
@pytest.mark.parametrize("broken", [CrashesOnLongIds, AcceptsAnyLabel])
def test_schemathesis_fuzz_catches_planted_bugs(broken: type[app.PredictionService]) -> None:
    pytest.importorskip("schemathesis")
    good = service()
    server = app.serve(broken(good.model, good.metrics, good.log, good.monitor), read_timeout_s=READ_TIMEOUT_S)
    try:
        _, _, failures = fuzz(f"http://{server.address}", max_examples=20)
    finally:
        server.stop()
    assert failures
