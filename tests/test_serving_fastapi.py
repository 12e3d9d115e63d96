"""The FastAPI reference server: a real uvicorn process passes every conformance check,
and servers built with a planted bug (noisy model, cross-talking batcher, batch-dependent
model, wrong feature count, a counter of batches) make each check fail. Also: loopback
binding, PNG upload, binary bodies, load shedding, LRU versions, warm-up, graceful drain,
/healthz staying fast while image bombs are in flight, and a schemathesis fuzz of the
OpenAPI schema with zero 5xx and every answered status documented."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("sklearn")

import httpx  # noqa: E402

from reference.ports import free_port  # noqa: E402
from reference.serving import adapters, conformance, deployments, images, models, server  # noqa: E402
from reference.serving.app import Settings, create_app  # noqa: E402
from reference.serving.batching import DynamicBatcher  # noqa: E402
from suite import checks, loadgen  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]
ROWS = models.digits_rows(48)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three versions of the tiny model, one per format."""
    root = tmp_path_factory.mktemp("models")
    for version, fmt in (("1", "torchscript"), ("2", "onnx"), ("3", "state_dict")):
        models.save_version(models.build("tiny", seed=int(version)), root / version, fmt)
    return root


@pytest.fixture(scope="module")
def reference_model() -> models.DigitsMLP:
    return models.build("tiny", seed=1)


@pytest.fixture(scope="module")
def live(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[deployments.Deployment]:
    """The reference server as deployed: a uvicorn process, dynamic batching on."""
    deployment = deployments.start_fastapi(model_root / "1", tmp_path_factory.mktemp("live"),
                                           deployments.ServeOptions(max_batch_size=8, max_queue_delay_ms=5.0))
    yield deployment
    deployment.stop()
    assert not deployment.process.running


class ThreadedServer:
    """An app built in the test (with a planted part) served by uvicorn in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "threaded server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def predict(self) -> loadgen.Adapter:
        return adapters.rows_json(self.url("/predict"))

    def batch(self) -> loadgen.Adapter:
        return adapters.rows_json(self.url("/predict-batch"))


def serve(model_root: Path, **overrides: Any) -> ThreadedServer:
    make = {k: overrides.pop(k) for k in ("load", "make_batcher") if k in overrides}
    settings = Settings(model_root=model_root, **{"max_batch_size": 8, "max_queue_delay_ms": 5.0, **overrides})
    return ThreadedServer(create_app(settings, **make))


def expected(model: models.DigitsMLP, rows: np.ndarray = ROWS) -> tuple[np.ndarray, np.ndarray]:
    return models.golden(model, rows), models.eager(model, rows)


# --------------------------------------------------------------------------- the real process


def test_outputs_match_the_eager_model(live: deployments.Deployment, reference_model: models.DigitsMLP) -> None:
    check = conformance.outputs_match_eager(live.predict, ROWS, *expected(reference_model))
    assert check.passed, check


def test_concurrent_callers_get_their_own_results(live: deployments.Deployment,
                                                  reference_model: models.DigitsMLP) -> None:
    before = deployments.counter_total(live.scrape(), "mlsuite_batches_total")
    check = conformance.no_crosstalk(live.predict, ROWS, expected(reference_model)[0], concurrency=24)
    batches = deployments.counter_total(live.scrape(), "mlsuite_batches_total") - before
    assert check.passed, check
    assert batches < len(ROWS)  # the batcher really merged requests


def test_predict_batch_equals_individual_predicts(live: deployments.Deployment) -> None:
    assert live.batch is not None
    check = conformance.batch_equals_individual(live.batch, live.predict, ROWS[:16])
    assert check.passed, check


def test_bad_input_gets_4xx_and_the_server_keeps_serving(live: deployments.Deployment) -> None:
    check = conformance.bad_input_rejected(live.bad_cases, conformance.http_sender(live.auth),
                                           conformance.adapter_probe(live.predict, ROWS[0]))
    assert check.passed, check.detail
    for case, status in (("oversized payload", 413), ("wrong content type", 415), ("malformed JSON", 400),
                         ("unknown version", 404), ("non-image upload", 415), ("NaN literal", 400),
                         ("Infinity literal", 400), ("number overflowing a double", 422),
                         ("extreme inputs, non-finite outputs", 422), ("binary NaN row", 422),
                         ("binary extreme row", 422), ("binary body of the wrong size", 422),
                         *((name, 413) for name in images.bombs())):
        assert f"{case}: {status}" in check.detail


def test_binary_rows_answer_as_json_rows(live: deployments.Deployment, reference_model: models.DigitsMLP) -> None:
    binary = conformance.served_outputs(lambda: adapters.rows_binary(f"{live.base_url}/predict"), list(ROWS[:8]))
    text = conformance.served_outputs(live.predict, list(ROWS[:8]))
    assert np.array_equal(binary.reshape(text.shape).astype(np.float32), text.astype(np.float32))
    batch = conformance.served_outputs(lambda: adapters.rows_binary(f"{live.base_url}/predict-batch"), [ROWS[:8]])
    assert checks.relative_error(batch[0].reshape(8, -1), text) <= checks.TIERS["fp32"]  # batched gemm rounds apart


def test_healthz_stays_fast_while_image_bombs_are_in_flight(live: deployments.Deployment) -> None:
    """Eight bombs and eight of the largest images allowed (decoded in full) at once:
    decoding runs off the event loop, so /healthz keeps answering within 50 ms."""
    from PIL import Image

    side = 1024  # images.MAX_PIXELS; a pattern that compresses under the body limit but decodes every pixel
    noise = Image.fromarray((np.add.outer(np.arange(side), 3 * np.arange(side)) % 251).astype(np.uint8), mode="L")
    buffer = __import__("io").BytesIO()
    noise.save(buffer, format="PNG")
    bombs = [*images.bombs().values()] * 2
    uploads = [*bombs, *[buffer.getvalue()] * 8]

    async def measure() -> tuple[list[float], list[int]]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def upload(data: bytes) -> int:
                files = {"file": ("x.png", data, "image/png")}
                return (await client.post(f"{live.base_url}/predict-image", files=files)).status_code

            quiet = []
            for _ in range(20):
                start = time.perf_counter()
                await client.get(f"{live.base_url}/healthz")
                quiet.append(time.perf_counter() - start)
                await asyncio.sleep(0.005)
            print(f"/healthz alone: max {max(quiet) * 1000:.1f} ms, p95 {np.percentile(quiet, 95) * 1000:.1f} ms; ",
                  end="")
            baseline.append(float(np.percentile(quiet, 95)))
            sent = [asyncio.create_task(upload(data)) for data in uploads]
            latencies = []
            while not all(task.done() for task in sent) or len(latencies) < 20:
                start = time.perf_counter()
                assert (await client.get(f"{live.base_url}/healthz")).status_code == 200
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.005)
            return latencies, [await task for task in sent]

    baseline: list[float] = []
    latencies, statuses = asyncio.run(measure())
    assert statuses == [413] * len(bombs) + [200] * 8
    # The max is one scheduler hiccup away on a shared 2-core host: the p95 is held to 50 ms
    # plus twice what /healthz takes alone on the host right now (its noise, measured); a
    # decode on the event loop would add ~25 ms per image, 200 ms for the eight.
    p95 = float(np.percentile(latencies, 95))
    assert float(np.median(latencies)) <= 0.05 + 2 * baseline[0]
    assert p95 <= 0.05 + 2 * baseline[0], f"/healthz p95 {p95 * 1000:.1f} ms (max {max(latencies) * 1000:.1f} ms)"
    print(f"/healthz with {len(uploads)} image uploads in flight: max {max(latencies) * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, median {np.median(latencies) * 1000:.1f} ms over {len(latencies)} probes")


def test_prometheus_counter_equals_client_count(live: deployments.Deployment) -> None:
    check = conformance.metrics_match_client(live.predict, ROWS, live.requests_counted, requests=120)
    assert check.passed, check


def test_binds_loopback_only(live: deployments.Deployment) -> None:
    port = int(live.base_url.rsplit(":", 1)[1])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A"]  # state LISTEN
    assert f"0100007F:{port:04X}" in listening


def test_server_thread_pools_follow_its_threads_not_its_starters(model_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite worker on 2 CPUs exports MKL_NUM_THREADS=2; a 1-thread server must not inherit it."""
    from reference.serving.process import THREAD_VARIABLES

    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "2")
    deployment = deployments.start_fastapi(model_root / "1", tmp_path, deployments.ServeOptions(threads=1))
    try:
        assert deployment.process.process is not None
        raw = Path(f"/proc/{deployment.process.process.pid}/environ").read_bytes()
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        assert {name: env[name.encode()] for name in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, b"1")
    finally:
        deployment.stop()


def test_png_upload_is_served_as_its_pixels(live: deployments.Deployment, reference_model: models.DigitsMLP) -> None:
    png = images.row_to_png(ROWS[5])
    base = live.base_url
    response = httpx.post(f"{base}/predict-image", files={"file": ("five.png", png, "image/png")})
    assert response.status_code == 200, response.text
    want = models.golden(reference_model, images.png_to_row(png)[None, :])[0]
    assert np.allclose(response.json()["outputs"], want, rtol=1e-5, atol=1e-6)


def fuzz_for_5xx(base: str, max_examples: int = 25) -> tuple[int, int, list[str], set[str]]:
    """Every operation of the server's own OpenAPI schema, fuzzed with schema-valid data
    and (for the POSTs) schema-invalid data; returns operations, calls, the 5xx seen and
    the answered statuses the schema does not document ("METHOD path status")."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    server_errors: list[str] = []
    undocumented: set[str] = set()
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    posts = [op for op in operations if op.method.upper() == "POST"]
    plans = [(op, GenerationMode.POSITIVE) for op in operations] + [(op, GenerationMode.NEGATIVE) for op in posts]
    for operation, mode in plans:

        @settings(max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def fuzz(case: Any) -> None:
            nonlocal calls
            response = case.call(base_url=base)
            calls += 1
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")
            if str(response.status_code) not in operation.definition.raw["responses"]:  # noqa: B023 - run at once
                undocumented.add(f"{case.method} {case.path} {response.status_code}")

        fuzz()
    return len(operations), calls, server_errors, undocumented


def test_schemathesis_fuzz_finds_no_5xx(live: deployments.Deployment) -> None:
    pytest.importorskip("schemathesis")
    operations, calls, server_errors, undocumented = fuzz_for_5xx(live.base_url)
    assert operations == 6 and calls >= 100
    assert not server_errors, server_errors[:5]
    assert not undocumented, sorted(undocumented)
    documented = httpx.get(f"{live.base_url}/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422"} <= set(documented)
    assert loadgen.run(conformance.adapter_probe(live.predict, ROWS[0]))  # still serving


def test_graceful_drain_finishes_in_flight_requests(model_root: Path, tmp_path: Path) -> None:
    """SIGTERM while requests wait in the batcher: each still gets its 200, then the
    process exits."""
    deployment = deployments.start_fastapi(model_root / "1", tmp_path,
                                           deployments.ServeOptions(max_batch_size=64, max_queue_delay_ms=2000.0))
    try:
        async def in_flight() -> list[int]:
            url = f"{deployment.base_url}/predict"
            async with httpx.AsyncClient(timeout=30) as client:
                sent = [asyncio.create_task(client.post(url, json={"inputs": row.tolist()})) for row in ROWS[:6]]
                deadline = time.monotonic() + 10
                while deployments.counter_total(deployment.scrape(), "mlsuite_pending_requests") < 6:
                    assert time.monotonic() < deadline, "requests never reached the batcher"
                    await asyncio.sleep(0.05)
                assert deployment.process.process is not None
                os.killpg(deployment.process.process.pid, signal.SIGTERM)  # all six wait for the batch
                return [(await task).status_code for task in sent]

        statuses = asyncio.run(in_flight())
        assert statuses == [200] * 6
        assert deployment.process.process is not None
        deployment.process.process.wait(timeout=20)
    finally:
        deployment.stop()
    assert not deployment.process.running


def worker_processes(parent: int) -> list[int]:
    """The spawned workers among the children of `parent` (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def test_several_workers_serve_one_port_and_one_scrape_counts_them_all(model_root: Path, tmp_path: Path) -> None:
    """--workers 2: two processes, each with its own warm model and batcher, share the port;
    a scrape, whichever worker answers it, adds up both (each warmed up: twice one's warm-up
    calls) and counts every request; a stop leaves no worker and no metrics files behind."""
    endpoint = server.start(model_root, tmp_path, max_batch_size=8, workers=2)
    parent = endpoint.server.process
    assert parent is not None
    try:
        workers = worker_processes(parent.pid)
        assert len(workers) == 2
        shared = Path(dict(line.split("=", 1) for line in Path(f"/proc/{workers[0]}/environ").read_text()
                           .split("\0") if "=" in line)["PROMETHEUS_MULTIPROC_DIR"])
        scrape = lambda: httpx.get(endpoint.metrics_url, timeout=10).text  # noqa: E731
        one_worker_warmup = 3 * len({1, 8})  # warmup_calls at batch sizes 1 and 8
        assert deployments.counter_total(scrape(), "mlsuite_warmup_calls_total") == 2 * one_worker_warmup
        counted = lambda: deployments.counter_total(scrape(), "mlsuite_http_requests_total",  # noqa: E731
                                                    endpoint="/predict")
        check = conformance.metrics_match_client(lambda: adapters.rows_json(f"{endpoint.base_url}/predict"),
                                                 ROWS, counted, requests=120)
        assert check.passed, check.detail
        assert shared.is_dir()
    finally:
        code = endpoint.server.stop()
    assert code == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not shared.exists()


def test_a_worker_that_dies_stops_the_server(model_root: Path, tmp_path: Path) -> None:
    """A crashed worker is not left half-served: the parent stops the other and exits 1."""
    endpoint = server.start(model_root, tmp_path, max_batch_size=8, workers=2)
    parent = endpoint.server.process
    assert parent is not None
    try:
        first, second = worker_processes(parent.pid)
        os.kill(first, signal.SIGKILL)
        assert parent.wait(timeout=30) == 1
        assert not Path(f"/proc/{second}").exists()  # stopped and reaped by the parent
    finally:
        endpoint.server.stop()


# --------------------------------------------------------------------------- planted bugs


@pytest.mark.breaks("serving.outputs_match_eager")
def test_outputs_check_catches_a_wrong_model(model_root: Path, reference_model: models.DigitsMLP) -> None:
    def noisy(directory: Path, threads: int) -> models.Predictor:
        predictor = models.load_version(directory, threads)
        return models.Predictor(lambda rows: predictor(rows) + 1e-3, predictor.in_features, predictor.fmt)

    with serve(model_root, load=noisy) as server:
        check = conformance.outputs_match_eager(server.predict, ROWS[:8], *expected(reference_model, ROWS[:8]))
    assert not check.passed and check.observed is not None and check.observed > 1e-5


class ReversingBatcher(DynamicBatcher):
    """Planted bug: each batch's outputs go back in reverse order."""

    def __init__(self, infer: Any, **kwargs: Any) -> None:
        super().__init__(lambda rows: infer(rows)[::-1].copy(), **kwargs)


@pytest.mark.breaks("serving.batching_no_crosstalk")
def test_crosstalk_check_catches_a_batcher_that_mixes_results(model_root: Path,
                                                               reference_model: models.DigitsMLP) -> None:
    with serve(model_root, make_batcher=ReversingBatcher) as server:
        check = conformance.no_crosstalk(server.predict, ROWS, expected(reference_model)[0], concurrency=24)
    assert not check.passed
    assert "callers got outputs that are not their own" in check.detail


@pytest.mark.breaks("serving.batch_equals_individual")
def test_batch_check_catches_a_batch_dependent_model(model_root: Path) -> None:
    def normalises_over_the_batch(directory: Path, threads: int) -> models.Predictor:
        predictor = models.load_version(directory, threads)
        return models.Predictor(lambda rows: predictor(rows - rows.mean(axis=0) + 8.0), predictor.in_features,
                                predictor.fmt)

    with serve(model_root, load=normalises_over_the_batch, max_batch_size=1) as server:
        check = conformance.batch_equals_individual(server.batch, server.predict, ROWS[:8])
    assert not check.passed


def wrong_width(directory: Path, threads: int) -> models.Predictor:
    """Planted bug (with in_features=63 in the settings): the server's idea of the row width
    is off by one, so bad rows reach the model and good ones are refused."""
    predictor = models.load_version(directory, threads)
    return models.Predictor(predictor.run, predictor.in_features - 1, predictor.fmt)


@pytest.mark.breaks("serving.bad_input_4xx")
def test_bad_input_check_catches_a_server_that_errors(model_root: Path, live: deployments.Deployment) -> None:
    with serve(model_root, load=wrong_width, in_features=63, warmup=False) as server:  # warm-up would fail
        cases = [deployments.BadCase(c.name, server.url("/predict"), c.body, c.content_type)
                 for c in live.bad_cases if c.name == "wrong shape"]
        check = conformance.bad_input_rejected(cases, conformance.http_sender({}),
                                               conformance.adapter_probe(server.predict, ROWS[0]))
    assert not check.passed
    assert "wrong shape: 500" in check.detail and "stopped answering" in check.detail


def log_preprocessing(directory: Path, threads: int) -> models.Predictor:
    """Planted bug: a preprocessing step that crashes on negative inputs."""
    predictor = models.load_version(directory, threads)

    def run(rows: np.ndarray) -> np.ndarray:
        if (rows < 0).any():
            raise ValueError("math domain error")
        return predictor(np.log1p(rows))

    return models.Predictor(run, predictor.in_features, predictor.fmt)


def test_fuzz_catches_a_server_that_errors(model_root: Path) -> None:
    pytest.importorskip("schemathesis")
    with serve(model_root, load=log_preprocessing) as server:
        _, _, server_errors, _ = fuzz_for_5xx(server.url(""), max_examples=10)
    assert any(" 500 " in error for error in server_errors)


@pytest.mark.breaks("serving.metrics_match_client")
def test_metrics_check_catches_a_counter_of_batches(live: deployments.Deployment) -> None:
    def batches() -> float:
        return deployments.counter_total(live.scrape(), "mlsuite_batches_total")

    check = conformance.metrics_match_client(live.predict, ROWS, batches, requests=96, concurrency=24)
    assert not check.passed and check.observed is not None and check.observed < 96


# --------------------------------------------------------------------------- behaviour


def test_full_queue_sheds_with_503_and_recovers(model_root: Path) -> None:
    with serve(model_root, max_pending=2, max_batch_size=64, max_queue_delay_ms=1000.0) as server:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return list(await asyncio.gather(*(client.post(server.url("/predict"), json={"inputs": r.tolist()})
                                                   for r in ROWS[:8])))

        responses = asyncio.run(burst())
        statuses = sorted(r.status_code for r in responses)
        after = httpx.post(server.url("/predict"), json={"inputs": ROWS[0].tolist()}, timeout=30)
        shed = next(r for r in responses if r.status_code == 503)
    assert statuses == [200, 200] + [503] * 6
    assert "overloaded" in shed.json()["detail"] and shed.headers["retry-after"] == "1"
    assert after.status_code == 200


def test_versions_live_in_an_lru_cache(model_root: Path) -> None:
    with serve(model_root, cache_size=2) as server:
        for version in ("1", "2", "3", "1"):
            response = httpx.post(server.url("/predict"), json={"inputs": ROWS[0].tolist(), "version": version})
            assert response.status_code == 200 and response.json()["version"] == version
        text = httpx.get(server.url("/metrics")).text
        ready = httpx.get(server.url("/readyz")).json()
    assert deployments.counter_total(text, "mlsuite_model_loads_total", version="1") == 2  # evicted by 3
    assert deployments.counter_total(text, "mlsuite_model_evictions_total") == 2
    assert ready["versions"] == ["3", "1"]


@pytest.mark.parametrize("warmup", [
    pytest.param(True, marks=pytest.mark.breaks("serving.no_warmup_when_off")),
    pytest.param(False, marks=pytest.mark.breaks("serving.warmup_ran")),
])
def test_warmup_runs_before_ready_only_when_asked(model_root: Path, warmup: bool) -> None:
    with serve(model_root, warmup=warmup) as server:
        ready = httpx.get(server.url("/readyz")).json()
        calls = deployments.counter_total(httpx.get(server.url("/metrics")).text, "mlsuite_warmup_calls_total")
    assert conformance.warmup_reported(ready, calls, expected=warmup).passed
    assert not conformance.warmup_reported(ready, calls, expected=not warmup).passed  # the check can fail


def test_what_start_up_made_is_frozen_out_of_the_collector_before_ready(model_root: Path) -> None:
    """A full collection of torch, the app and the model took ~100 ms: the server freezes
    them once warm, before it says ready, so no collection scans them under load."""
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with serve(model_root) as server:
        assert httpx.get(server.url("/readyz")).json()["ready"]
        assert gc.get_freeze_count() > 10_000  # the threaded server shares this process
