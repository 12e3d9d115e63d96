"""TorchServe handler for the digits model, packaged into the .mar (it runs in TorchServe's
worker, so it imports nothing from this repository).

Only one class may live in this module (TorchServe's rule), so a bad request is a ValueError.
A request body is JSON `{"inputs": [64 floats]}`; the response is `{"outputs": [10 floats]}`.
TorchServe hands `handle` a batch of requests; each is validated on its own, so a bad one
gets its own 400 while the others in the batch are still answered, and the valid rows run
as one model call whose outputs go back in request order (a row whose outputs are not
finite gets a 400 too: JSON cannot carry them).
"""

from __future__ import annotations

import gc
import json
import math
import os

import torch
from ts.torch_handler.base_handler import BaseHandler


def parse_row(body: object, features: int) -> list[float]:
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except ValueError as exc:  # JSON and Unicode decode errors
            raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise ValueError('expected a JSON object {"inputs": [numbers]}')
    row = body["inputs"]
    if len(row) != features:
        raise ValueError(f"expected {features} features, got {len(row)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
        raise ValueError("every input must be a finite number")
    return [float(v) for v in row]


class DigitsHandler(BaseHandler):
    def initialize(self, context) -> None:  # type: ignore[no-untyped-def]
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "setup_config.json")) as f:
            setup = json.load(f)
        torch.set_num_threads(int(setup["threads"]))
        self.features = int(setup["in_features"])
        self.model = torch.jit.load(os.path.join(model_dir, setup["model_file"]), map_location="cpu").eval()
        self.initialized = True
        gc.freeze()  # as the reference server does once warm: no ~100 ms full collections of torch under load

    def handle(self, data, context):  # type: ignore[no-untyped-def]
        responses: list[object] = [None] * len(data)
        rows, positions = [], []
        for index, request in enumerate(data):
            body = request.get("body") if request.get("body") is not None else request.get("data")
            try:
                rows.append(parse_row(body, self.features))
                positions.append(index)
            except ValueError as exc:
                context.set_response_status(400, str(exc), index)
                responses[index] = {"error": str(exc)}
        if rows:
            with torch.inference_mode():
                outputs = self.model(torch.tensor(rows, dtype=torch.float32))
            finite = torch.isfinite(outputs).all(dim=1).tolist()
            for index, output, ok in zip(positions, outputs.tolist(), finite, strict=True):
                if ok:
                    responses[index] = {"outputs": output}
                else:  # JSON has no inf/NaN: inputs far outside the model's range
                    message = "the model's outputs for these inputs are not finite numbers"
                    context.set_response_status(400, message, index)
                    responses[index] = {"error": message}
        return responses
