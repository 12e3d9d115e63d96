"""TensorRT 10.x: ONNX -> serialised engine (FP16, or INT8 with an entropy calibrator over the
calibration split), engine load, and inference with torch CUDA tensors as the I/O buffers
(TensorRT only needs device pointers, so no pycuda build step).

Needs the `tensorrt` package and a CUDA GPU; nothing here is imported on CPU hosts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from reference.optimize.runtimes import ConversionError

PRECISIONS = ("fp16", "int8")
WORKSPACE_BYTES = 1 << 30
CALIBRATION_BATCH = 32


@cache
def _logger():  # type: ignore[no-untyped-def]
    """One logger per process: TensorRT expects the builder and runtime to share it."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def entropy_calibrator(calibration: torch.Tensor, batch_size: int = CALIBRATION_BATCH):  # type: ignore[no-untyped-def]
    """An IInt8EntropyCalibrator2 feeding full batches of the calibration split from GPU memory."""
    import tensorrt as trt

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            usable = len(calibration) // batch_size * batch_size
            self.batches = [calibration[i:i + batch_size].contiguous().cuda() for i in range(0, usable, batch_size)]
            self.position = 0
            self.cache: bytes | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.position == len(self.batches):
                return None
            self.position += 1
            return [int(self.batches[self.position - 1].data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache

        def write_calibration_cache(self, cache) -> None:  # type: ignore[no-untyped-def]
            self.cache = bytes(cache)

    return Calibrator()


def build_engine(onnx_path: Path, precision: str, calibration: torch.Tensor | None = None,
                 opt_batch: int = 8, max_batch: int = 64) -> bytes:
    """Parse the ONNX file and build a serialised engine with a dynamic batch profile."""
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError("TensorRT OnnxParser", RuntimeError(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    source = network.get_input(0)
    rest = tuple(source.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(source.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        if calibration is None:
            raise ValueError("INT8 needs calibration data")
        config.set_flag(trt.BuilderFlag.INT8)
        calibration_profile = builder.create_optimization_profile()
        fixed = (CALIBRATION_BATCH, *rest)
        calibration_profile.set_shape(source.name, fixed, fixed, fixed)
        config.set_calibration_profile(calibration_profile)
        config.int8_calibrator = entropy_calibrator(calibration)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError("TensorRT build_serialized_network", RuntimeError("no engine; see the TensorRT log"))
    return bytes(serialized)


def save_engine(engine: bytes, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(engine)
    return path.stat().st_size


class EngineRunner:
    """A deserialised engine with one execution context, called like a module on CUDA tensors."""

    def __init__(self, engine: bytes) -> None:
        import tensorrt as trt

        self.runtime = trt.Runtime(_logger())
        self.engine = self.runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise ConversionError("TensorRT deserialize_cuda_engine", RuntimeError("engine could not be loaded"))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"expected one input and one output, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                  trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
        self.input_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.input_dtype).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        output = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)),
                             dtype=self.output_dtype, device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return output
