"""A `Runtime` is an optimised model ready to serve, whatever produced it (eager, torch.ao,
torchao, ONNX Runtime, TorchScript, torch.compile, torch.export, TensorRT).

`prepare` turns a CPU batch into the runtime's native input once, outside the timed call;
`infer` is the timed call; `to_tensor` brings an output back as a CPU float tensor for
conformance and accuracy. Size is the serialised artefact the runtime would ship.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class ConversionError(RuntimeError):
    """An export or conversion failed; the message carries the converter's own words."""

    def __init__(self, converter: str, cause: BaseException) -> None:
        super().__init__(f"{converter} failed: {type(cause).__name__}: {cause}")
        self.converter = converter


@dataclass
class Runtime:
    name: str
    precision: str  # fp32, bf16, fp16, tf32 or int8 (int8 is judged by accuracy, not tensors)
    infer: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any]
    to_tensor: Callable[[Any], torch.Tensor]
    size_bytes: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_tensor(self.infer(self.prepare(x)))


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of `torch.save(state_dict)`: what a checkpoint of this module weighs."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return len(buffer.getvalue())


def linear_weight_bytes(module: nn.Module) -> int:
    """fp32 bytes held by nn.Linear weights: the part INT8 weight quantisation shrinks 4x."""
    return sum(m.weight.numel() * m.weight.element_size() for m in module.modules() if isinstance(m, nn.Linear))


def to_cpu_float(output: torch.Tensor) -> torch.Tensor:
    return output.detach().float().cpu()


def torch_module(module: nn.Module, name: str, precision: str = "fp32", device: str = "cpu",
                 autocast: torch.dtype | None = None, size_bytes: int | None = None) -> Runtime:
    """Any callable torch module (eager, quantised, scripted, compiled, exported), called
    under no_grad, optionally under autocast."""
    device_type = torch.device(device).type

    def infer(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if autocast is None:
                return module(x)
            with torch.autocast(device_type=device_type, dtype=autocast):
                return module(x)

    return Runtime(name=name, precision=precision, infer=infer, prepare=lambda x: x.to(device),
                   to_tensor=to_cpu_float,
                   size_bytes=state_dict_bytes(module) if size_bytes is None else size_bytes,
                   provenance={"device": device, "autocast": str(autocast) if autocast else None})


@torch.no_grad()
def golden_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The fp64 eager reference every runtime is compared against."""
    import copy

    golden = copy.deepcopy(model).double().eval()
    return golden(x.double() if x.is_floating_point() else x)


def correct_predictions(runtime: Runtime, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Per-example correctness (bool), so accuracy carries a bootstrap CI and deltas can be paired."""
    hits = [runtime.predict(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]
            for i in range(0, len(x), batch_size)]
    return torch.cat(hits)
