"""Glue: FastAPI, TorchServe and Triton behind one interface for the scenarios and tests.

A `Deployment` is a started server plus what the harness needs to drive and judge it: the
load generator's adapters (one row per request, and many rows per request where the server
has such an API), the Prometheus counter of inference requests, and the server's own list
of bad requests, each of which must get a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reference.serving import images
from reference.serving.process import ManagedServer
from suite import loadgen

SERVERS = ("fastapi", "torchserve", "triton")
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class BadCase:
    """One malformed request: a JSON-ish body with a content type, or a multipart upload."""

    name: str
    url: str
    body: bytes = b""
    content_type: str | None = "application/json"
    upload: tuple[str, bytes, str] | None = None  # (file name, bytes, declared content type)
    authorized: bool = True  # False: sent without the server's token


@dataclass
class Deployment:
    server: str
    process: ManagedServer
    ready_s: float
    base_url: str  # the inference API's root
    metrics_url: str
    count_requests: Callable[[str], float]  # inference requests counted in a metrics scrape
    predict: Callable[[], loadgen.Adapter]  # requests are single rows
    batch: Callable[[], loadgen.Adapter] | None  # requests are (n, features) arrays
    bad_cases: list[BadCase]
    auth: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def scrape(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def requests_counted(self) -> float:
        return self.count_requests(self.scrape())

    def stop(self) -> int | None:
        return self.process.stop()


def counter_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels match (the parser names a counter
    exported without the `_total` suffix with it, as Triton's are)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {name, f"{name}_total"}
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name in names and all(sample.labels.get(k) == v for k, v in labels.items()))


def _json_row(row: Any) -> dict[str, Any]:
    return {"inputs": np.asarray(row, dtype=np.float64).tolist()}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def common_bad_cases(url: str, features: int) -> list[BadCase]:
    """Bad bodies every JSON row API must refuse with a 4xx."""
    return [
        BadCase("malformed JSON", url, b'{"inputs": [1.0, 2.0'),
        BadCase("wrong shape", url, _json({"inputs": [0.5] * (features - 1)})),
        BadCase("wrong dtype", url, _json({"inputs": ["x"] * features})),
        BadCase("not an object", url, _json([0.5] * features)),
        BadCase("oversized payload", url, _json({"inputs": [0.5] * (MAX_BODY_BYTES // 4)})),
    ]


def start_fastapi(version_dir: Path, workdir: Path, *, batching: bool, max_batch_size: int,
                  max_queue_delay_ms: float, threads: int, warmup: bool = True) -> Deployment:
    from reference.serving import server

    endpoint = server.start(version_dir.parent, workdir, version=version_dir.name,
                            max_batch_size=max_batch_size if batching else 1,
                            max_queue_delay_ms=max_queue_delay_ms if batching else 0.0,
                            threads=threads, warmup=warmup)
    base, features = endpoint.base_url, _features(version_dir)
    predict, batch, image = f"{base}/predict", f"{base}/predict-batch", f"{base}/predict-image"
    row = [0.5] * features
    cases = [
        *common_bad_cases(predict, features),
        BadCase("wrong content type", predict, _json({"inputs": row}), "text/plain"),
        BadCase("empty batch", batch, _json({"inputs": []})),
        BadCase("ragged batch", batch, _json({"inputs": [row, row[:-1]]})),
        BadCase("unknown version", predict, _json({"inputs": row, "version": "no-such-version"})),
        BadCase("non-image upload", image, upload=("digit.png", b"this is not a PNG", "image/png")),
        BadCase("upload with wrong type", image, upload=("digit.txt", images.row_to_png(np.zeros(64)), "text/plain")),
    ]
    return Deployment(
        "fastapi", endpoint.server, endpoint.ready_s, base, endpoint.metrics_url,
        lambda text: counter_total(text, "mlsuite_http_requests_total", endpoint="/predict"),
        predict=lambda: loadgen.HttpJsonAdapter(predict, to_json=_json_row),
        batch=lambda: loadgen.HttpJsonAdapter(batch, to_json=_json_row),
        bad_cases=cases,
        provenance={"server": "uvicorn+FastAPI (reference)", "max_batch_size": max_batch_size if batching else 1,
                    "max_queue_delay_ms": max_queue_delay_ms if batching else 0.0, "warmup": warmup})


def start_torchserve(version_dir: Path, workdir: Path, *, batching: bool, max_batch_size: int,
                     max_queue_delay_ms: float, threads: int) -> Deployment:
    from reference.serving import torchserve

    batch_size = max_batch_size if batching else 1
    delay = max(1, round(max_queue_delay_ms)) if batching else 0
    endpoint = torchserve.start_torchserve(version_dir, workdir, batch_size=batch_size, max_batch_delay_ms=delay,
                                           threads=threads, max_request_bytes=MAX_BODY_BYTES)
    token = endpoint.token
    url, features = endpoint.predict_url, _features(version_dir)
    auth = {"Authorization": f"Bearer {token}"}
    cases = [
        *common_bad_cases(url, features),
        BadCase("wrong content type", url, b"inputs=1,2,3", "application/x-www-form-urlencoded"),
        BadCase("missing token", url, _json(_json_row([0.5] * features)), authorized=False),
    ]
    return Deployment(
        "torchserve", endpoint.server, endpoint.ready_s, endpoint.inference_url, f"{endpoint.metrics_url}/metrics",
        lambda text: counter_total(text, "ts_inference_requests_total", model_name=torchserve.MODEL_NAME),
        predict=lambda: loadgen.TorchServeAdapter(endpoint.inference_url, torchserve.MODEL_NAME, token,
                                                  to_json=_json_row),
        batch=None, bad_cases=cases, auth=auth,
        provenance={"server": f"TorchServe {_version('torchserve')}", "batchSize": batch_size,
                    "maxBatchDelay_ms": delay, "token_auth": True})


TRITON_PROTOCOLS = ("json", "http", "grpc")  # KServe JSON on the lean client; tritonclient HTTP; tritonclient gRPC


def start_triton(version_dir: Path, workdir: Path, *, batching: bool, max_batch_size: int,
                 max_queue_delay_ms: float, threads: int, protocol: str = "json") -> Deployment:
    from reference.serving import triton

    if protocol not in TRITON_PROTOCOLS:
        raise ValueError(f"unknown Triton protocol {protocol!r}; choose from {', '.join(TRITON_PROTOCOLS)}")
    endpoint = triton.start_triton(version_dir, workdir, max_batch_size=max_batch_size, dynamic_batching=batching,
                                   max_queue_delay_us=round(max_queue_delay_ms * 1000), threads=threads)
    url, features = endpoint.infer_url, _features(version_dir)

    def tensor(shape: list[int], data: list[Any], datatype: str = "FP32") -> bytes:
        return _json({"inputs": [{"name": triton.INPUT_NAME, "shape": shape, "datatype": datatype, "data": data}]})

    cases = [
        BadCase("malformed JSON", url, b'{"inputs": [{"name": "INPUT"'),
        BadCase("wrong shape", url, tensor([1, features - 1], [0.5] * (features - 1))),
        BadCase("wrong dtype", url, tensor([1, features], [1] * features, "INT32")),
        BadCase("empty batch", url, tensor([0, features], [])),
        BadCase("data does not fill the shape", url, tensor([1, features], [0.5] * 3)),
        BadCase("wrong content type", url, b"inputs=1,2,3", "application/x-www-form-urlencoded"),
    ]

    def adapter() -> loadgen.Adapter:
        if protocol == "grpc":
            return loadgen.TritonGrpcAdapter(endpoint.grpc_address, triton.MODEL_NAME)
        if protocol == "http":
            return loadgen.TritonHttpAdapter(endpoint.http_address, triton.MODEL_NAME)
        return loadgen.KServeJsonAdapter(url, triton.INPUT_NAME, triton.OUTPUT_NAME)

    def count(text: str) -> float:
        return sum(counter_total(text, f"nv_inference_request_{kind}", model=triton.MODEL_NAME)
                   for kind in ("success", "failure"))

    return Deployment(
        "triton", endpoint.server, endpoint.ready_s, f"http://{endpoint.http_address}", endpoint.metrics_url, count,
        predict=adapter, batch=adapter,
        bad_cases=cases,
        provenance={"server": "Triton 2.51 (nvidia-pytriton wheel), Python backend", "protocol": protocol,
                    "http_address": endpoint.http_address, "grpc_address": endpoint.grpc_address,
                    "dynamic_batching": batching, "max_batch_size": max_batch_size,
                    "max_queue_delay_us": round(max_queue_delay_ms * 1000)})


def start(server: str, version_dir: Path, workdir: Path, *, batching: bool, max_batch_size: int = 16,
          max_queue_delay_ms: float = 2.0, threads: int = 1, protocol: str = "json") -> Deployment:
    if server == "fastapi":
        return start_fastapi(version_dir, workdir, batching=batching, max_batch_size=max_batch_size,
                             max_queue_delay_ms=max_queue_delay_ms, threads=threads)
    if server == "torchserve":
        return start_torchserve(version_dir, workdir, batching=batching, max_batch_size=max_batch_size,
                                max_queue_delay_ms=max_queue_delay_ms, threads=threads)
    if server == "triton":
        return start_triton(version_dir, workdir, batching=batching, max_batch_size=max_batch_size,
                            max_queue_delay_ms=max_queue_delay_ms, threads=threads, protocol=protocol)
    raise ValueError(f"unknown server {server!r}; choose from {', '.join(SERVERS)}")


def _features(version_dir: Path) -> int:
    return int(json.loads((version_dir / "meta.json").read_text())["in_features"])


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
