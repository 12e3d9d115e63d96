"""Glue: every server behind one interface for the scenarios and tests.

A `Deployment` is a started server plus what the harness needs to drive and judge it: the
load generator's adapters (one row per request, and many rows per request where the server
has such an API), the Prometheus counter of inference requests, and the server's own list
of bad requests, each of which should get a 4xx (what each server really answers is
recorded). Servers are started from one table, `STARTERS`; adding a server is one entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reference.serving import adapters, images
from reference.serving.process import ManagedServer
from suite import loadgen

MAX_BODY_BYTES = 1 << 20
EXTREME = float(np.finfo(np.float32).max)  # finite inputs; a row of +-EXTREME can overflow a model's outputs
EXTREME_CASE = "extreme inputs, non-finite outputs"


@dataclass(frozen=True)
class ServeOptions:
    """How a server is started, the same for every server."""

    batching: bool = True
    max_batch_size: int = 16  # the one default, for every server
    max_queue_delay_ms: float = 2.0
    threads: int = 1  # model intra-op threads
    protocol: str = "json"  # how the load generator talks to it (a key of the server's PROTOCOLS)
    cpus: frozenset[int] | None = None  # the server's processes run on these CPUs (None: anywhere)
    workers: int = 1  # the reference server's processes on its port (TorchServe and Triton: one model instance)

    @property
    def batch_size(self) -> int:
        return self.max_batch_size if self.batching else 1


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


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _row_text(features: int, first: str, rest: str = "0.5") -> bytes:
    return f"[{', '.join([first] + [rest] * (features - 1))}]".encode()


def extreme_row(version_dir: Path, threads: int) -> np.ndarray | None:
    """The deployed model's row of +-EXTREME whose outputs are not finite here, found with
    the code path the servers run (models.overflowing_row); None where the outputs stay finite,
    and then a 200 is the right answer and there is no bad case to send."""
    from reference.serving import models

    return models.overflowing_row(models.load_version(version_dir, threads), EXTREME)


def non_finite_cases(url: str, features: int, extreme: np.ndarray | None,
                     wrap: Callable[[bytes], bytes]) -> list[BadCase]:
    """Inputs a model cannot answer with numbers: JSON's forbidden NaN/Infinity literals,
    a number that overflows a double, and valid finite inputs so large that the model's
    outputs overflow (the server must notice the outputs, not only the inputs)."""
    cases = [
        BadCase("NaN literal", url, wrap(_row_text(features, "NaN"))),
        BadCase("Infinity literal", url, wrap(_row_text(features, "-Infinity"))),
        BadCase("number overflowing a double", url, wrap(_row_text(features, "1e400"))),
    ]
    if extreme is not None:
        cases.append(BadCase(EXTREME_CASE, url, wrap(_json([float(v) for v in extreme]))))
    return cases


def common_bad_cases(url: str, features: int, extreme: np.ndarray | None) -> list[BadCase]:
    """Bad bodies every `{"inputs": row}` JSON API must refuse with a 4xx."""
    return [
        BadCase("malformed JSON", url, b'{"inputs": [1.0, 2.0'),
        BadCase("wrong shape", url, _json({"inputs": [0.5] * (features - 1)})),
        BadCase("wrong dtype", url, _json({"inputs": ["x"] * features})),
        BadCase("not an object", url, _json([0.5] * features)),
        BadCase("oversized payload", url, _json({"inputs": [0.5] * (MAX_BODY_BYTES // 4)})),
        *non_finite_cases(url, features, extreme, lambda row: b'{"inputs": ' + row + b"}"),
    ]


def _pin(options: ServeOptions) -> set[int] | None:
    return set(options.cpus) if options.cpus else None


def start_fastapi(version_dir: Path, workdir: Path, options: ServeOptions = ServeOptions(), *,
                  warmup: bool = True) -> Deployment:
    from reference.serving import server

    endpoint = server.start(version_dir.parent, workdir, version=version_dir.name,
                            max_batch_size=options.batch_size,
                            max_queue_delay_ms=options.max_queue_delay_ms if options.batching else 0.0,
                            threads=options.threads, workers=options.workers, warmup=warmup, cpus=_pin(options))
    base, features = endpoint.base_url, _features(version_dir)
    extreme = extreme_row(version_dir, options.threads)
    predict, batch, image = f"{base}/predict", f"{base}/predict-batch", f"{base}/predict-image"
    row = [0.5] * features
    cases = [
        *common_bad_cases(predict, features, extreme),
        BadCase("wrong content type", predict, _json({"inputs": row}), "text/plain"),
        BadCase("empty batch", batch, _json({"inputs": []})),
        BadCase("ragged batch", batch, _json({"inputs": [row, row[:-1]]})),
        BadCase("unknown version", predict, _json({"inputs": row, "version": "no-such-version"})),
        BadCase("binary body of the wrong size", predict, b"\0" * 10, adapters.OCTET_STREAM),
        BadCase("binary NaN row", predict, np.full(features, np.nan, "<f4").tobytes(), adapters.OCTET_STREAM),
        *([] if extreme is None else [BadCase("binary extreme row", predict, extreme.astype("<f4").tobytes(),
                                              adapters.OCTET_STREAM)]),
        *(BadCase(name, image, upload=(f"{name}.png", data, "image/png")) for name, data in images.bombs().items()),
        BadCase("non-image upload", image, upload=("digit.png", b"this is not a PNG", "image/png")),
        BadCase("upload with wrong type", image, upload=("digit.txt", images.row_to_png(np.zeros(64)), "text/plain")),
    ]
    protocols = {"json": adapters.rows_json, "binary": adapters.rows_binary}
    if options.protocol not in protocols:
        raise ValueError(f"the reference server speaks {', '.join(protocols)}, not {options.protocol!r}")
    speak = protocols[options.protocol]
    return Deployment(
        "fastapi", endpoint.server, endpoint.ready_s, base, endpoint.metrics_url,
        lambda text: counter_total(text, "mlsuite_http_requests_total", endpoint="/predict"),
        predict=lambda: speak(predict), batch=lambda: speak(batch), bad_cases=cases,
        provenance={"server": "uvicorn+FastAPI (reference)", "max_batch_size": options.batch_size,
                    "max_queue_delay_ms": options.max_queue_delay_ms if options.batching else 0.0,
                    "warmup": warmup, "protocol": options.protocol, "workers": options.workers})


def start_torchserve(version_dir: Path, workdir: Path, options: ServeOptions = ServeOptions()) -> Deployment:
    from reference.serving import torchserve

    if options.protocol != "json":
        raise ValueError(f"the TorchServe handler speaks json, not {options.protocol!r}")
    delay = max(1, round(options.max_queue_delay_ms)) if options.batching else 0
    endpoint = torchserve.start_torchserve(version_dir, workdir, batch_size=options.batch_size,
                                           max_batch_delay_ms=delay, threads=options.threads,
                                           max_request_bytes=MAX_BODY_BYTES, cpus=_pin(options))
    token = endpoint.token
    url, features = endpoint.predict_url, _features(version_dir)
    cases = [
        *common_bad_cases(url, features, extreme_row(version_dir, options.threads)),
        BadCase("wrong content type", url, b"inputs=1,2,3", "application/x-www-form-urlencoded"),
        BadCase("missing token", url, _json(adapters.json_row([0.5] * features)), authorized=False),
    ]
    return Deployment(
        "torchserve", endpoint.server, endpoint.ready_s, endpoint.inference_url, f"{endpoint.metrics_url}/metrics",
        lambda text: counter_total(text, "ts_inference_requests_total", model_name=torchserve.MODEL_NAME),
        predict=lambda: adapters.torchserve(endpoint.inference_url, torchserve.MODEL_NAME, token),
        batch=None, bad_cases=cases, auth={"Authorization": f"Bearer {token}"},
        provenance={"server": f"TorchServe {_version('torchserve')}", "batchSize": options.batch_size,
                    "maxBatchDelay_ms": delay, "token_auth": True, "protocol": "json"})


def start_triton(version_dir: Path, workdir: Path, options: ServeOptions = ServeOptions()) -> Deployment:
    from reference.serving import triton

    endpoint = triton.start_triton(version_dir, workdir, max_batch_size=options.max_batch_size,
                                   dynamic_batching=options.batching,
                                   max_queue_delay_us=round(options.max_queue_delay_ms * 1000),
                                   threads=options.threads, cpus=_pin(options))
    url, features = endpoint.infer_url, _features(version_dir)

    def tensor(shape: list[int], data: list[Any], datatype: str = "FP32") -> bytes:
        return _json({"inputs": [{"name": triton.INPUT_NAME, "shape": shape, "datatype": datatype, "data": data}]})

    def wrap(row: bytes) -> bytes:
        return (b'{"inputs": [{"name": "' + triton.INPUT_NAME.encode() + b'", "shape": [1, '
                + str(features).encode() + b'], "datatype": "FP32", "data": ' + row + b"}]}")

    cases = [
        BadCase("malformed JSON", url, b'{"inputs": [{"name": "INPUT"'),
        BadCase("wrong shape", url, tensor([1, features - 1], [0.5] * (features - 1))),
        BadCase("wrong dtype", url, tensor([1, features], [1] * features, "INT32")),
        BadCase("empty batch", url, tensor([0, features], [])),
        BadCase("data does not fill the shape", url, tensor([1, features], [0.5] * 3)),
        BadCase("wrong content type", url, b"inputs=1,2,3", "application/x-www-form-urlencoded"),
        *non_finite_cases(url, features, extreme_row(version_dir, options.threads), wrap),
    ]
    protocols: dict[str, Callable[[], loadgen.Adapter]] = {
        "json": lambda: adapters.kserve_json(url, triton.INPUT_NAME, triton.OUTPUT_NAME),
        "http": lambda: adapters.TritonHttp(endpoint.http_address, triton.MODEL_NAME),
        "grpc": lambda: adapters.TritonGrpc(endpoint.grpc_address, triton.MODEL_NAME),
    }
    if options.protocol not in protocols:
        endpoint.server.stop()
        raise ValueError(f"Triton is driven with {', '.join(protocols)}, not {options.protocol!r}")

    def count(text: str) -> float:
        return sum(counter_total(text, f"nv_inference_request_{kind}", model=triton.MODEL_NAME)
                   for kind in ("success", "failure"))

    return Deployment(
        "triton", endpoint.server, endpoint.ready_s, f"http://{endpoint.http_address}", endpoint.metrics_url, count,
        predict=protocols[options.protocol], batch=protocols[options.protocol], bad_cases=cases,
        provenance={"server": "Triton 2.51 (nvidia-pytriton wheel), Python backend", "protocol": options.protocol,
                    "http_address": endpoint.http_address, "grpc_address": endpoint.grpc_address,
                    "dynamic_batching": options.batching,
                    "max_batch_size": options.max_batch_size,
                    "max_queue_delay_us": round(options.max_queue_delay_ms * 1000)})


Starter = Callable[[Path, Path, ServeOptions], Deployment]
STARTERS: dict[str, Starter] = {"fastapi": start_fastapi, "torchserve": start_torchserve, "triton": start_triton}


def start(server: str, version_dir: Path, workdir: Path, options: ServeOptions = ServeOptions()) -> Deployment:
    if server not in STARTERS:
        raise ValueError(f"unknown server {server!r}; choose from {', '.join(STARTERS)}")
    if server != "fastapi" and options.workers != 1:
        raise ValueError(f"workers={options.workers} is the reference server's option; {server} runs one model "
                         f"instance here")
    deployment = STARTERS[server](version_dir, workdir, options)
    sent = any(case.name == EXTREME_CASE for case in deployment.bad_cases)
    deployment.provenance["extreme_inputs_case"] = (
        "sent: a row of +-float32 max whose outputs are not finite on this host" if sent else
        "not sent: no row of +-float32 max tried makes this model's outputs non-finite on this host")
    return deployment


def _features(version_dir: Path) -> int:
    return int(json.loads((version_dir / "meta.json").read_text())["in_features"])


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cpu_split() -> tuple[set[int] | None, frozenset[int] | None]:
    """(generator CPUs, server CPUs) where cores allow, else (None, None)."""
    split = loadgen.split_cpus()
    return (split[0], frozenset(split[1])) if split else (None, None)

