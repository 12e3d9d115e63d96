"""The FastAPI reference server.

Endpoints: `/predict` (one row), `/predict-batch` (rows), each as JSON or as raw float32
(`application/octet-stream`), `/predict-image` (PNG upload), `/healthz` (alive), `/readyz`
(model loaded and warmed up, not draining), `/metrics` (Prometheus). Start-up runs in the
lifespan handler: it loads the default version into the LRU model cache and warms it up
before the server accepts traffic. Every request goes through the version's dynamic batcher.

The two inference endpoints are served by a pure ASGI layer in front of FastAPI: a request
there costs a msgspec decode (typed, strict, with the row width and the float32 range in the
type) and one model call shared by its batch, instead of FastAPI's routing, dependency
solving and pydantic validation (py-spy put those, with a thread hop per request for a sync
dependency, at about half of the server's CPU). FastAPI keeps the other endpoints and
the OpenAPI schema, which documents the inference endpoints from the same msgspec types.

Bad input is a 4xx with a message, never a 5xx: 400 malformed body, 404 unknown version,
405 wrong method, 413 over a size limit (body, rows, or decoded image pixels), 415 wrong
media type, 422 schema or shape errors or outputs that are not finite numbers, and 503
when the bounded queue is full or the server drains. PNG decoding runs in a thread pool of
its own with a pixel limit, never on the event loop.
"""

# No `from __future__ import annotations`: FastAPI must see the request models built inside
# create_app (their row width comes from the settings) as real annotations.
import asyncio
import gc
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from reference.serving import images, models
from reference.serving.batching import Draining, DynamicBatcher, QueueFull
from reference.serving.cache import LRUCache

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FLOAT32_MAX = float(np.finfo(np.float32).max)
Feature = Annotated[float, msgspec.Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]  # JSON numbers; bools and strings refused
JSON, BINARY = "application/json", "application/octet-stream"
Loader = Callable[[Path, int], models.Predictor]
BatcherFactory = Callable[..., DynamicBatcher]
IMAGE_THREADS = 1  # PNG decoding, off the event loop, one at a time (the loop keeps a core on 2)


@dataclass(frozen=True)
class Settings:
    model_root: Path
    default_version: str = "1"
    cache_size: int = 2
    max_batch_size: int = 16  # 1 turns dynamic batching off (the model then runs in the event loop's thread)
    max_queue_delay_ms: float = 2.0
    max_pending: int = 512
    max_body_bytes: int = 1 << 20
    max_batch_rows: int = 256
    in_features: int = models.IN_FEATURES  # the row width the API declares
    warmup: bool = True
    warmup_calls: int = 3
    threads: int = 1


class PredictResponse(msgspec.Struct):
    outputs: list[float]
    version: str


class PredictBatchResponse(msgspec.Struct):
    outputs: list[list[float]]
    version: str


class ApiError(Exception):
    """A request the server refuses: an HTTP status, a message and optional headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def request_types(features: int) -> tuple[type[msgspec.Struct], type[msgspec.Struct]]:
    """Request bodies with the row width in the type, so the decoder enforces it and the
    schema shows it to clients (and fuzzers)."""
    Row = Annotated[list[Feature], msgspec.Meta(min_length=features, max_length=features,
                                                description=f"one row of {features} finite numbers")]
    Version = Annotated[str | None, msgspec.Meta(description="model version; the default when absent")]
    single = msgspec.defstruct("PredictRequest", [("inputs", Row), ("version", Version, None)])
    batch = msgspec.defstruct("PredictBatchRequest", [
        ("inputs", Annotated[list[Row], msgspec.Meta(min_length=1, description="rows of features; at least one")]),
        ("version", Version, None)])
    return single, batch


class ServingMetrics:
    """Prometheus instruments on a registry of this app's own (several apps may share a
    process in tests). Under several worker processes (`server --workers`, which sets
    PROMETHEUS_MULTIPROC_DIR) each worker writes its values to files there, and a scrape,
    whichever worker answers it, adds up every worker's."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        self.requests = Counter("mlsuite_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("mlsuite_http_request_duration_seconds", "Server-side request latency",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.batches = Counter("mlsuite_batches", "Model calls made by the batchers", registry=self.registry)
        self.batch_size = Histogram("mlsuite_batch_size", "Rows per model call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.shed = Counter("mlsuite_shed", "Requests refused because the queue was full",
                            registry=self.registry)
        self.loads = Counter("mlsuite_model_loads", "Model versions loaded into the cache", ["version"],
                             registry=self.registry)
        self.evictions = Counter("mlsuite_model_evictions", "Model versions evicted from the cache",
                                 registry=self.registry)
        self.warmup_calls = Counter("mlsuite_warmup_calls", "Model calls made by warm-up", registry=self.registry)
        self.pending = Gauge("mlsuite_pending_requests", "Requests admitted and not yet answered",
                             registry=self.registry, multiprocess_mode="livesum")

    def follow_pending(self, count: Callable[[], int]) -> None:
        """One process: the pending gauge reads `count` at each scrape. Several: a scrape
        cannot call into the other workers, so `infer` moves the gauge as requests come and go."""
        if self.shared_dir is None:
            self.pending.set_function(count)

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.shared_dir is None:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker, path=self.shared_dir)
        return generate_latest(every_worker)

    def on_batch(self, rows: int) -> None:
        self.batches.inc()
        self.batch_size.observe(rows)


@dataclass
class ServedModel:
    version: str
    predictor: models.Predictor
    batcher: DynamicBatcher


@dataclass
class ServingState:
    settings: Settings
    metrics: ServingMetrics
    cache: LRUCache[str, ServedModel]
    ready: bool = False
    draining: bool = False
    warmed_up: bool = False
    closing: set[asyncio.Task[None]] = field(default_factory=set)

    def batchers(self) -> list[DynamicBatcher]:
        return [served.batcher for served in self.cache.values()]


class UnknownVersion(LookupError):
    pass


def _version_loader(settings: Settings, metrics: ServingMetrics, load: Loader,
                    make_batcher: BatcherFactory) -> Callable[[str], ServedModel]:
    root = settings.model_root.resolve()

    def load_version(version: str) -> ServedModel:
        directory = (root / version).resolve()
        if not VERSION_PATTERN.match(version) or directory.parent != root or not (directory / "meta.json").is_file():
            raise UnknownVersion(version)
        predictor = load(directory, settings.threads)
        batcher = make_batcher(predictor, max_batch_size=settings.max_batch_size,
                               max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                               max_pending=settings.max_pending, on_batch=metrics.on_batch)
        batcher.start()
        metrics.loads.labels(version).inc()
        return ServedModel(version, predictor, batcher)

    return load_version


def _warm_up(served: ServedModel, settings: Settings, metrics: ServingMetrics) -> None:
    """Run the model at the batch sizes it will see before declaring the server ready."""
    for size in sorted({1, settings.max_batch_size}):
        rows = np.zeros((size, served.predictor.in_features), dtype=np.float32)
        for _ in range(settings.warmup_calls):
            served.predictor(rows)
            metrics.warmup_calls.inc()


class GuardMiddleware:
    """Pure ASGI: counts every response by endpoint and status, times it, and refuses
    bodies over the size limit with 413 before the app reads them."""

    def __init__(self, app: Any, state: ServingState, endpoints: set[str]) -> None:
        self.app = app
        self.state = state
        self.endpoints = endpoints

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_counted(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            receive = await self._within_limit(scope, receive)
            if receive is None:
                limit = self.state.settings.max_body_bytes
                response = JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)
                await response(scope, self._nothing, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _within_limit(self, scope: dict[str, Any], receive: Any) -> Any:
        """`receive` for the app, or None when the body is over the limit. A body without
        Content-Length (chunked) is read here, up to the limit, and replayed."""
        limit = self.state.settings.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            return None if not declared.isdigit() or int(declared) > limit else receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return None
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> dict[str, Any]:
            return replay.pop() if replay else await receive()

        return replayed

    @staticmethod
    async def _nothing() -> dict[str, Any]:
        return {"type": "http.disconnect"}


ENCODE = msgspec.json.Encoder().encode


def answer(outputs: np.ndarray, version: str) -> bytes:
    """The JSON response body (PredictResponse or PredictBatchResponse)."""
    return ENCODE({"outputs": outputs.tolist(), "version": version})


def _media_type(headers: dict[bytes, bytes]) -> str:
    return headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")


@dataclass(frozen=True)
class Route:
    """One inference endpoint of the ASGI front: how a body becomes rows."""

    json: msgspec.json.Decoder[Any]
    batch: bool  # rows per request: many, or exactly one


class InferenceApi:
    """Pure ASGI front for POST /predict and /predict-batch (JSON or raw float32 rows);
    every other path goes on to FastAPI."""

    def __init__(self, app: Any, settings: Settings,
                 infer: Callable[[str | None, np.ndarray], Awaitable[tuple[np.ndarray, str]]]) -> None:
        self.app = app
        self.settings = settings
        self.infer = infer
        single, batch = request_types(settings.in_features)
        self.routes = {"/predict": Route(msgspec.json.Decoder(single), batch=False),
                       "/predict-batch": Route(msgspec.json.Decoder(batch), batch=True)}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            status, body, content_type, headers = 200, *(await self._answer(route, scope, receive))
        except ApiError as exc:
            status, body, content_type, headers = exc.status, ENCODE({"detail": exc.detail}), JSON, exc.headers
        raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, route: Route, scope: dict[str, Any], receive: Any) -> tuple[bytes, str, dict[str, str]]:
        if scope["method"] != "POST":
            raise ApiError(405, f"{scope['path']} takes POST", {"Allow": "POST"})
        media_type = _media_type(dict(scope["headers"]))
        body = await _read_body(receive)
        if media_type == JSON:
            rows, version = self._from_json(route, body)
            outputs, served = await self.infer(version, rows)
            return answer(outputs if route.batch else outputs[0], served), JSON, {}
        if media_type == BINARY:
            rows = self._from_binary(route, body)
            version = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("version", [None])[0]
            outputs, served = await self.infer(version, rows)
            return np.ascontiguousarray(outputs, dtype="<f4").tobytes(), BINARY, {"X-Model-Version": served}
        raise ApiError(415, f"expected Content-Type {JSON} or {BINARY}, got {media_type or 'none'}")

    def _from_json(self, route: Route, body: bytes) -> tuple[np.ndarray, str | None]:
        try:
            request = route.json.decode(body)
        except msgspec.ValidationError as exc:
            raise ApiError(422, str(exc)) from None
        except msgspec.DecodeError as exc:  # not JSON, or a number no double holds (1e400)
            raise ApiError(400, f"malformed JSON body: {exc}") from None
        if route.batch and len(request.inputs) > self.settings.max_batch_rows:
            raise ApiError(413, f"{len(request.inputs)} rows is more than {self.settings.max_batch_rows} per request")
        rows = np.asarray(request.inputs if route.batch else [request.inputs], dtype=np.float32)
        return rows, request.version

    def _from_binary(self, route: Route, body: bytes) -> np.ndarray:
        features = self.settings.in_features
        row_bytes = 4 * features
        count, rest = divmod(len(body), row_bytes)
        if rest or count < 1 or (count != 1 and not route.batch):
            wanted = f"a multiple of {row_bytes}" if route.batch else f"{row_bytes}"
            raise ApiError(422, f"expected {wanted} bytes of little-endian float32 rows, got {len(body)}")
        if count > self.settings.max_batch_rows:
            raise ApiError(413, f"{count} rows is more than {self.settings.max_batch_rows} per request")
        rows = np.frombuffer(body, dtype="<f4").reshape(count, features)
        if not np.isfinite(rows).all():
            raise ApiError(422, "every input must be a finite number")
        return rows.astype(np.float32, copy=False)


async def _read_body(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ApiError(400, "the client went away before sending its body")
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


REFUSALS = {400: "malformed body", 404: "unknown model version", 405: "wrong method",
            413: "body, rows or image pixels over the limit", 415: "unsupported media type",
            422: "schema, shape or range error, or outputs that are not finite",
            503: "overloaded or draining; retry after the Retry-After seconds"}


def _documented(app: FastAPI, features: int) -> dict[str, Any]:
    """FastAPI's OpenAPI schema plus the inference endpoints of the ASGI front, from the
    same msgspec types that decode their bodies, and every refusal status."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    single, batch = request_types(features)
    (single_ref, batch_ref, out_ref, outs_ref), components = msgspec.json.schema_components(
        (single, batch, PredictResponse, PredictBatchResponse), ref_template="#/components/schemas/{name}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
    error = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}},
                                             "required": ["detail"]}}}
    refusals = {str(code): {"description": why, "content": error} for code, why in REFUSALS.items()}
    binary = {"schema": {"type": "string", "format": "binary"}}
    for path, request, response, rows in (("/predict", single_ref, out_ref, "one row"),
                                          ("/predict-batch", batch_ref, outs_ref, "rows")):
        schema["paths"][path] = {"post": {
            "summary": f"Model outputs for {rows}",
            "operationId": path.strip("/").replace("-", "_"),
            "parameters": [{"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "model version for binary bodies (JSON bodies carry it inside)"}],
            "requestBody": {"required": True, "content": {JSON: {"schema": request}, BINARY: binary}},
            "responses": {"200": {"description": "outputs", "content": {JSON: {"schema": response}, BINARY: binary}},
                          **refusals},
        }}
    image = schema["paths"]["/predict-image"]["post"]
    image["responses"] = {"200": {"description": "outputs", "content": {JSON: {"schema": out_ref}}},
                          **{k: v for k, v in refusals.items() if k != "405"}}
    return schema


def create_app(settings: Settings, load: Loader = models.load_version,
               make_batcher: BatcherFactory = DynamicBatcher, warmed: Callable[[], object] | None = None) -> Any:
    """The server for one model root (an ASGI app); `load` and `make_batcher` are the
    parts under test. `warmed` runs (in a thread) once the model is warm, before the server
    accepts: the workers of `server --workers` wait there for each other."""
    metrics = ServingMetrics()

    def evict(_: str, served: ServedModel) -> None:
        metrics.evictions.inc()
        task = asyncio.get_running_loop().create_task(served.batcher.close())  # drains its queue
        state.closing.add(task)
        task.add_done_callback(state.closing.discard)

    cache = LRUCache(settings.cache_size, _version_loader(settings, metrics, load, make_batcher), on_evict=evict)
    state = ServingState(settings, metrics, cache)
    metrics.follow_pending(lambda: sum(b.pending for b in state.batchers()))
    image_pool = ThreadPoolExecutor(max_workers=IMAGE_THREADS, thread_name_prefix="png")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = cache.get(settings.default_version)
        if settings.warmup:
            await asyncio.to_thread(_warm_up, served, settings, metrics)
            state.warmed_up = True
        if warmed is not None:
            await asyncio.to_thread(warmed)
        # What start-up made (torch, the app, the model: ~190,000 objects) lives as long as the
        # server: out of the collector's way, a full collection stops scanning it. It took
        # ~100 ms each time, and one such pause in a 3 s probe set the p99 of an open-loop
        # load at 56% of the server's peak (serving.side_by_side, large model: 7 -> 133 ms).
        gc.freeze()
        state.ready = True
        yield
        state.ready, state.draining = False, True
        await asyncio.gather(*(b.close() for b in state.batchers()), *state.closing)
        image_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="mlsuite reference model server", version="1.0", lifespan=lifespan)
    app.state.serving = state

    @app.exception_handler(ApiError)
    async def refused(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    def served_model(version: str | None) -> ServedModel:
        try:
            return cache.get(version or settings.default_version)
        except UnknownVersion:
            raise ApiError(404, f"unknown model version {version!r}") from None

    async def infer(version: str | None, rows: np.ndarray) -> tuple[np.ndarray, str]:
        served = served_model(version)
        if rows.shape[1] != served.predictor.in_features:
            raise ApiError(422, f"expected {served.predictor.in_features} features per row, got {rows.shape[1]}")
        shared = metrics.shared_dir is not None
        if shared:
            metrics.pending.inc()
        try:
            outputs = await served.batcher.submit(rows)
        except QueueFull as exc:
            metrics.shed.inc()
            raise ApiError(503, f"overloaded: {exc}; retry later", {"Retry-After": "1"}) from None
        except Draining as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        finally:
            if shared:
                metrics.pending.dec()
        if not np.isfinite(outputs).all():  # JSON has no inf/NaN: inputs far outside the model's range
            raise ApiError(422, "the model's outputs for these inputs are not finite numbers")
        return outputs, served.version

    @app.post("/predict-image", response_class=Response)
    async def predict_image(file: Annotated[UploadFile, File(description="an 8x8 greyscale PNG")],
                            version: Annotated[str | None, Form()] = None) -> Response:
        if file.content_type != "image/png":
            raise ApiError(415, f"expected an image/png upload, got {file.content_type or 'none'}")
        data = await file.read()
        try:
            row = await asyncio.get_running_loop().run_in_executor(image_pool, images.png_to_row, data)
        except images.TooManyPixels as exc:
            raise ApiError(413, str(exc)) from None
        except images.NotAnImage as exc:
            raise ApiError(415, str(exc)) from None
        outputs, served_version = await infer(version, row[None, :])
        return Response(answer(outputs[0], served_version), media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body = {"ready": state.ready and not state.draining, "warmed_up": state.warmed_up,
                "draining": state.draining, "versions": cache.keys()}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _documented(app, settings.in_features)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    front = InferenceApi(app, settings, infer)
    endpoints = {route.path for route in app.routes if hasattr(route, "path")} | set(front.routes)
    return GuardMiddleware(front, state, endpoints)
