"""ONNX export with a dynamic batch axis, by the dynamo exporter (torch.export based, the
default since torch 2.9) or the legacy TorchScript one, followed by onnx.checker's full check.
The opset actually written is read back from the file, not assumed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reference.optimize.runtimes import ConversionError

EXPORTERS = ("dynamo", "legacy")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportedOnnx:
    path: Path
    exporter: str
    opset: int
    size_bytes: int  # the model file plus any external-data files next to it


def file_bytes(path: Path) -> int:
    """An ONNX model with its external data (weights the exporter wrote beside it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in locations)


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str,
           opset: int | None = None) -> ExportedOnnx:
    """Export with batch as a dynamic axis; any failure raises ConversionError with the
    exporter's message."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    options: dict = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if exporter == "dynamo":
        options.update(dynamo=True, external_data=False,
                       dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    else:
        options.update(dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(model.eval(), (example,), str(path), **options)
    except Exception as exc:  # noqa: BLE001 - reported with the exporter's own message
        raise ConversionError(f"torch.onnx.export ({exporter})", exc) from exc
    return ExportedOnnx(path=path, exporter=exporter, opset=opset_of(path), size_bytes=file_bytes(path))


def checker_error(path: Path) -> str | None:
    """None when onnx.checker's full check (with shape inference) passes, else its message."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker's verdict is data, not a crash
        return f"{type(exc).__name__}: {exc}"
    return None
