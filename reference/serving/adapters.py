"""How the load generator talks to each server: the lean HTTP client of `suite.httpclient`
with each server's body and response format, and Triton's own client (`tritonclient`)
over HTTP and gRPC. A request is one row (features,) or a batch (rows, features)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from suite.httpclient import HttpJsonAdapter, RequestFailed

OCTET_STREAM = "application/octet-stream"


def json_row(row: Any) -> dict[str, Any]:
    return {"inputs": np.asarray(row, dtype=np.float64).tolist()}


def rows_json(url: str, headers: dict[str, str] | None = None) -> HttpJsonAdapter:
    """`{"inputs": row or rows}` in, `{"outputs": ...}` back: the reference server's JSON
    API and the TorchServe handler's."""
    return HttpJsonAdapter(url, headers, to_json=json_row)


def rows_binary(url: str) -> HttpJsonAdapter:
    """Raw little-endian float32 rows in and outputs back (`application/octet-stream`): no
    text parsing on either side. The reference server reads the row count from the size."""
    return HttpJsonAdapter(url, content_type=OCTET_STREAM,
                           encode=lambda rows: np.ascontiguousarray(rows, dtype="<f4").tobytes(),
                           decode=lambda body: np.frombuffer(body, dtype="<f4").astype(np.float64))


def torchserve(base_url: str, model: str, token: str | None) -> HttpJsonAdapter:
    """TorchServe's inference API: POST /predictions/<model> with the inference token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return rows_json(f"{base_url.rstrip('/')}/predictions/{model}", headers)


def kserve_json(infer_url: str, input_name: str = "INPUT", output_name: str = "OUTPUT") -> HttpJsonAdapter:
    """The KServe v2 (Triton) inference protocol in JSON: one FP32 input tensor, batch
    dimension first."""

    def tensor(request: Any) -> dict[str, Any]:
        rows = np.atleast_2d(np.asarray(request, dtype=np.float32))
        return {"inputs": [{"name": input_name, "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.reshape(-1).tolist()}]}

    def outputs(body: bytes) -> np.ndarray:
        found = next(o for o in json.loads(body)["outputs"] if o["name"] == output_name)
        return np.asarray(found["data"], dtype=np.float64).reshape(found["shape"])

    return HttpJsonAdapter(infer_url, to_json=tensor, decode=outputs)


class _TritonClient:
    """Shared by the tritonclient HTTP and gRPC adapters: one FP32 input, one output."""

    def __init__(self, client: Any, module: Any, model: str, input_name: str, output_name: str) -> None:
        self.client, self.module = client, module
        self.model, self.input_name, self.output_name = model, input_name, output_name

    def prepare(self, request: Any) -> Any:
        rows = np.atleast_2d(np.asarray(request, dtype=np.float32))
        tensor = self.module.InferInput(self.input_name, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        return [tensor]

    async def issue(self, prepared: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return await self.client.infer(self.model, prepared)
        except InferenceServerException as exc:
            raise RequestFailed(f"triton_{exc.status() or 'error'}", exc.message() or "") from None

    def outputs(self, response: Any) -> np.ndarray:
        return np.asarray(response.as_numpy(self.output_name), dtype=np.float64)

    async def aclose(self) -> None:
        await self.client.close()


class TritonHttp(_TritonClient):
    def __init__(self, url: str, model: str, input_name: str = "INPUT", output_name: str = "OUTPUT",
                 concurrency: int = 64) -> None:
        import tritonclient.http.aio as module

        client = module.InferenceServerClient(urlsplit(url).netloc or url, conn_limit=max(concurrency, 100))
        super().__init__(client, module, model, input_name, output_name)


class TritonGrpc(_TritonClient):
    def __init__(self, address: str, model: str, input_name: str = "INPUT", output_name: str = "OUTPUT") -> None:
        import tritonclient.grpc.aio as module

        super().__init__(module.InferenceServerClient(address), module, model, input_name, output_name)
