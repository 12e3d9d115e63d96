"""The FastAPI reference server.

Endpoints: `/predict` (one JSON row), `/predict-batch` (JSON rows), `/predict-image` (PNG
upload), `/healthz` (alive), `/readyz` (model loaded and warmed up, not draining),
`/metrics` (Prometheus). Start-up runs in the lifespan handler: it loads the default
version into the LRU model cache and warms it up before the server accepts traffic.
Every request goes through the version's dynamic batcher. Bad input is a 4xx with a
message, never a 5xx: 413 over the size limit, 415 wrong media type, 422 schema or shape
errors, 404 unknown version, 503 when the bounded queue is full or the server drains.
"""

# No `from __future__ import annotations`: FastAPI must see the request models built inside
# create_app (their row width comes from the settings) as real annotations.
import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from reference.serving import images, models
from reference.serving.batching import Draining, DynamicBatcher, QueueFull
from reference.serving.cache import LRUCache

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FLOAT32_MAX = float(np.finfo(np.float32).max)
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Loader = Callable[[Path, int], models.Predictor]
BatcherFactory = Callable[..., DynamicBatcher]


@dataclass(frozen=True)
class Settings:
    model_root: Path
    default_version: str = "1"
    cache_size: int = 2
    max_batch_size: int = 16  # 1 turns dynamic batching off
    max_queue_delay_ms: float = 2.0
    max_pending: int = 512
    max_body_bytes: int = 1 << 20
    max_batch_rows: int = 256
    in_features: int = models.IN_FEATURES  # the row width the API declares
    warmup: bool = True
    warmup_calls: int = 3
    threads: int = 1


def request_models(features: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request bodies with the row width in the schema, so clients (and fuzzers) see it."""
    Row = Annotated[list[Feature], Field(min_length=features, max_length=features)]

    class PredictRequest(BaseModel):
        inputs: Row = Field(description=f"one row of {features} finite numbers")
        version: str | None = Field(default=None, description="model version; the default when absent")

    class PredictBatchRequest(BaseModel):
        inputs: list[Row] = Field(min_length=1, description="rows of features; at least one")
        version: str | None = None

    return PredictRequest, PredictBatchRequest


class PredictResponse(BaseModel):
    outputs: list[float]
    version: str


class PredictBatchResponse(BaseModel):
    outputs: list[list[float]]
    version: str


class ServingMetrics:
    """Prometheus instruments on a registry of this app's own (several apps may share a
    process in tests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
                             registry=self.registry)

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

        async def send_counted(message: dict[str, Any]) -> None:
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


def answer(outputs: np.ndarray, version: str) -> JSONResponse:
    """The response body, serialised directly: the declared response_model documents it,
    and skipping FastAPI's re-validation of every float keeps the hot path short."""
    return JSONResponse({"outputs": outputs.tolist(), "version": version})


def require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, f"expected Content-Type application/json, got {media_type or 'none'}")


def create_app(settings: Settings, load: Loader = models.load_version,
               make_batcher: BatcherFactory = DynamicBatcher) -> FastAPI:
    """The server for one model root; `load` and `make_batcher` are the parts under test."""
    metrics = ServingMetrics()

    def evict(_: str, served: ServedModel) -> None:
        metrics.evictions.inc()
        task = asyncio.get_running_loop().create_task(served.batcher.close())  # drains its queue
        state.closing.add(task)
        task.add_done_callback(state.closing.discard)

    cache = LRUCache(settings.cache_size, _version_loader(settings, metrics, load, make_batcher), on_evict=evict)
    state = ServingState(settings, metrics, cache)
    metrics.pending.set_function(lambda: sum(b.pending for b in state.batchers()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = cache.get(settings.default_version)
        if settings.warmup:
            await asyncio.to_thread(_warm_up, served, settings, metrics)
            state.warmed_up = True
        state.ready = True
        yield
        state.ready, state.draining = False, True
        await asyncio.gather(*(b.close() for b in state.batchers()), *state.closing)

    app = FastAPI(title="mlsuite reference model server", version="1.0", lifespan=lifespan)
    app.state.serving = state

    def served_model(version: str | None) -> ServedModel:
        try:
            return cache.get(version or settings.default_version)
        except UnknownVersion:
            raise HTTPException(404, f"unknown model version {version!r}") from None

    async def infer(version: str | None, rows: np.ndarray) -> tuple[np.ndarray, str]:
        served = served_model(version)
        if rows.shape[1] != served.predictor.in_features:
            raise HTTPException(422, f"expected {served.predictor.in_features} features per row, "
                                     f"got {rows.shape[1]}")
        try:
            outputs = await served.batcher.submit(rows)
        except QueueFull as exc:
            metrics.shed.inc()
            raise HTTPException(503, f"overloaded: {exc}; retry later", headers={"Retry-After": "1"}) from None
        except Draining as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        if not np.isfinite(outputs).all():  # JSON has no inf/NaN: inputs far outside the model's range
            raise HTTPException(422, "the model's outputs for these inputs are not finite numbers")
        return outputs, served.version

    PredictRequest, PredictBatchRequest = request_models(settings.in_features)

    @app.post("/predict", response_model=PredictResponse, dependencies=[Depends(require_json)])
    async def predict(body: PredictRequest) -> JSONResponse:
        outputs, version = await infer(body.version, np.asarray([body.inputs], dtype=np.float32))
        return answer(outputs[0], version)

    @app.post("/predict-batch", response_model=PredictBatchResponse, dependencies=[Depends(require_json)])
    async def predict_batch(body: PredictBatchRequest) -> JSONResponse:
        if len(body.inputs) > settings.max_batch_rows:
            raise HTTPException(413, f"{len(body.inputs)} rows is more than {settings.max_batch_rows} per request")
        outputs, version = await infer(body.version, np.asarray(body.inputs, dtype=np.float32))
        return answer(outputs, version)

    @app.post("/predict-image", response_model=PredictResponse)
    async def predict_image(file: Annotated[UploadFile, File(description="an 8x8 greyscale PNG")],
                            version: Annotated[str | None, Form()] = None) -> JSONResponse:
        if file.content_type != "image/png":
            raise HTTPException(415, f"expected an image/png upload, got {file.content_type or 'none'}")
        try:
            row = images.png_to_row(await file.read())
        except images.NotAnImage as exc:
            raise HTTPException(415, str(exc)) from None
        outputs, served_version = await infer(version, row[None, :])
        return answer(outputs[0], served_version)

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
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    endpoints = {route.path for route in app.routes if hasattr(route, "path")}
    app.add_middleware(GuardMiddleware, state=state, endpoints=endpoints)
    return app
