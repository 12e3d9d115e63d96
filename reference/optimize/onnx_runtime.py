"""ONNX Runtime: sessions with an explicit provider chain, and ORT's own INT8 quantisation.

ORT silently falls back to the next provider in the chain (ultimately the CPU) when one
cannot be loaded, so the provider a session actually got is read back and recorded next to
the one asked for. Thread counts, execution mode and graph optimisation level are set
explicitly, never left to defaults that differ between versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from reference.optimize.onnx_export import INPUT_NAME, OUTPUT_NAME, file_bytes, opset_of
from reference.optimize.runtimes import ConversionError, Runtime

PROVIDER_CHAINS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
# CUDA EP: TF32 off, so an fp32 session is judged in the fp32 tier.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
STATIC_FORMATS = ("qdq", "qoperator")
CALIBRATION_BATCH = 64


def session(path: Path, provider: str = "cpu", threads: int = 1,
            optimization: str = "all") -> tuple[Any, dict[str, Any]]:
    """An InferenceSession and what it really runs with."""
    import onnxruntime as ort

    if provider not in PROVIDER_CHAINS:
        raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDER_CHAINS)}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown optimisation level {optimization!r}; choose from {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    chain = PROVIDER_CHAINS[provider]
    try:
        created = ort.InferenceSession(str(path), sess_options=options,
                                       providers=[(name, PROVIDER_OPTIONS.get(name, {})) for name in chain])
    except Exception as exc:  # noqa: BLE001
        raise ConversionError("onnxruntime InferenceSession", exc) from exc
    used = created.get_providers()
    info = {"provider_requested": chain[0], "provider_chain": list(chain), "provider_used": used[0],
            "providers_registered": used, "providers_available": ort.get_available_providers(),
            "graph_optimization_level": optimization, "ort_intra_op_threads": threads,
            "ort_inter_op_threads": 1, "ort_execution_mode": "sequential", "onnxruntime": ort.__version__}
    return created, info


def ort_runtime(path: Path, name: str, precision: str, provider: str = "cpu", threads: int = 1,
                optimization: str = "all") -> Runtime:
    """Numpy in, numpy out, as an ORT user calls it; host<->device copies count as latency."""
    created, info = session(path, provider, threads, optimization)

    def infer(array: np.ndarray) -> np.ndarray:
        return created.run([OUTPUT_NAME], {INPUT_NAME: array})[0]

    return Runtime(name=name, precision=precision, infer=infer,
                   prepare=lambda x: np.ascontiguousarray(x.numpy()),
                   to_tensor=lambda out: torch.from_numpy(np.asarray(out)).float(),
                   size_bytes=file_bytes(path), provenance={**info, "opset": opset_of(path)})


def preprocess(source: Path, target: Path) -> Path:
    """Shape inference and graph cleanup that ORT's quantiser expects first."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(target))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError("onnxruntime quant_pre_process", exc) from exc
    return target


def quantize_dynamic(source: Path, target: Path) -> Path:
    """INT8 weights; activations quantised per batch at run time (no calibration)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    try:
        ort_quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError("onnxruntime quantize_dynamic", exc) from exc
    return target


def calibration_reader(calibration: torch.Tensor, batch_size: int = CALIBRATION_BATCH):  # type: ignore[no-untyped-def]
    """A CalibrationDataReader over the calibration split, in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [calibration[i:i + batch_size].numpy() for i in range(0, len(calibration), batch_size)]
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position == len(self.batches):
                return None
            self.position += 1
            return {INPUT_NAME: self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = 0

    return BatchReader()


def quantize_static(source: Path, target: Path, calibration: torch.Tensor, quant_format: str) -> Path:
    """Static INT8 with MinMax calibration: QDQ (Q/DQ pairs around float ops, what TensorRT
    and most EPs consume) or QOperator (fused QLinear* ops, CPU oriented)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if quant_format not in formats:
        raise ValueError(f"unknown format {quant_format!r}; choose from {', '.join(formats)}")
    try:
        ort_quantize_static(str(source), str(target), calibration_reader(calibration),
                            quant_format=formats[quant_format], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"onnxruntime quantize_static ({quant_format})", exc) from exc
    return target
