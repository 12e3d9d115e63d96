"""Model optimisation as suite scenarios: one comparable table, runtime x precision x batch
size. Every scenario turns the same trained workload into a Runtime, records its cold-start
costs (export, quantise/calibrate, compile, engine build, session load, first inference),
times it at batch 1, 8 and 64, and measures accuracy vs fp32 and the shipped size.

Imports nothing heavy at module level, so `mlsuite list` works with only the core installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.requirements import Cuda, Package, Requirement
from suite.schema import Check, Metric

BATCH_SIZES = (1, 8, 64)
MODELS = ["mlp", "cnn", "tabular", "lstm", "transformer"]
TORCH = (Package("torch"), Package("scikit-learn", module="sklearn"))
ONNX = (*TORCH, Package("onnx"), Package("onnxruntime"), Package("onnxscript"))
TORCHAO = (*TORCH, Package("torchao"))
TENSORRT = (*TORCH, Package("onnx"), Package("onnxscript"))
# Eager-mode static PTQ cannot take these: not applicable, not broken.
STATIC_AO_UNSUPPORTED = {
    "transformer": "token ids are integers, which QuantStub cannot quantise, and eager static PTQ has no "
                   "quantised nn.MultiheadAttention (use dynamic quantisation)",
}


@dataclass(frozen=True)
class NotApplicable(Requirement):
    why: str

    def unmet(self) -> str | None:
        return f"not applicable: {self.why}"


@dataclass(frozen=True)
class OrtProvider(Requirement):
    """An ONNX Runtime execution provider this onnxruntime build ships (CUDA, TensorRT)."""

    provider: str

    def unmet(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "package onnxruntime is not installed"
        import onnxruntime

        available = onnxruntime.get_available_providers()
        return None if self.provider in available else f"onnxruntime has no {self.provider} (has {available})"


@dataclass(frozen=True)
class TensorRT10(Requirement):
    """TensorRT 10.x: 11 removed the FP16/INT8 builder flags and the calibrators used here."""

    def unmet(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "package tensorrt is not installed"
        import tensorrt

        major = int(tensorrt.__version__.split(".")[0])
        return None if major == 10 else f"tensorrt {tensorrt.__version__} is not 10.x (this path uses the 10.x API)"


def rename(metric: Metric, name: str) -> Metric:
    return metric.model_copy(update={"name": name})


class OptimizeScenario(Scenario):
    """Shared: load the trained workload, build the runtime, time it, judge it."""

    step_batch_size = 8  # the batch `step()` runs; asv / pytest-benchmark may change it

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*self.requires, *([Cuda()] if params.get("device") == "cuda" else [])]

    # -- to override ---------------------------------------------------------------------
    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        """Return the Runtime; record conversion costs with self.cold(...)."""
        raise NotImplementedError

    def fp32_size(self) -> int:
        """Size of the fp32 artefact this runtime's size is compared with (same format)."""
        from reference.optimize.runtimes import state_dict_bytes

        return state_dict_bytes(self.workload.model)

    def extra_checks(self, ctx: RunContext) -> list[Check]:
        return []

    # -- shared ---------------------------------------------------------------------------
    def cold(self, ctx: RunContext, name: str, fn: Callable[[], Any]) -> Any:
        metric, result = ctx.cold(name, fn)
        self.cold_metrics.append(metric)
        return result

    def setup(self, ctx: RunContext) -> None:
        import tempfile

        import torch

        from reference.optimize import workloads
        from reference.optimize.conformance import EXPORT_BATCH

        p = ctx.params
        self.workload = workloads.load(p["model"], p["size"], ctx.seed, workloads.default_cache_dir())
        self.scratch = tempfile.TemporaryDirectory(prefix="mlsuite-optimize-")
        self.workdir = Path(self.scratch.name)
        self.example = self.workload.batch(EXPORT_BATCH)
        self.cold_metrics: list[Metric] = []
        self.runtime = self.build(ctx)
        ctx.provenance.update(
            runtime=self.runtime.name, precision=self.runtime.precision, model=p["model"],
            trained_seconds=self.workload.train_seconds, weights="trained" if self.workload.train_seconds else "cache",
            torch_threads={"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
            export_batch=EXPORT_BATCH, batch_sizes=list(BATCH_SIZES),
            eval_set="pinned real eval split" if self.workload.has_eval_task else "synthetic: accuracy is no claim",
            **self.runtime.provenance)
        self.inputs = {b: self.runtime.prepare(self.workload.batch(b)) for b in BATCH_SIZES}

    def infer_at(self, batch_size: int) -> Any:
        return self.runtime.infer(self.inputs[batch_size])

    def step(self) -> None:
        self.infer_at(self.step_batch_size)

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.optimize import conformance, runtimes

        metrics = list(self.cold_metrics)
        for b in BATCH_SIZES:  # the first call at each shape: allocation, (re)compilation, autotuning
            metric, _ = ctx.cold(f"first_inference.b{b}", partial(self.infer_at, b))
            metrics.append(metric)
        for b in BATCH_SIZES:
            timed, _ = ctx.time_steps(partial(self.infer_at, b), items_per_call=b, prefix=f"b{b}.")
            metrics += [rename(timed[0], f"latency.b{b}"), rename(timed[1], f"throughput.b{b}")]
        self.reference_size = self.fp32_size()
        metrics += conformance.size_metrics(self.runtime.size_bytes, self.reference_size)
        split = self.workload.split
        fp32 = runtimes.torch_module(self.workload.model, "eager")
        self.fp32_correct = runtimes.correct_predictions(fp32, split.x_eval, split.y_eval)
        self.correct = runtimes.correct_predictions(self.runtime, split.x_eval, split.y_eval)
        metrics += conformance.accuracy_metrics(self.fp32_correct, self.correct)
        return metrics

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.optimize import conformance, runtimes

        inputs = [self.workload.batch(b) for b in conformance.unseen_batch_sizes(ctx.seed)]
        found = [conformance.matches_golden(self.runtime, self.workload.model, inputs)]
        if self.workload.has_eval_task:
            found.append(conformance.keeps_fp32_accuracy(self.fp32_correct, self.correct))
        if self.runtime.precision == "int8":
            size = conformance.int8_shrinks_linear_weights(self.runtime.size_bytes, self.reference_size,
                                                           runtimes.linear_weight_bytes(self.workload.model))
            found += [size] if size is not None else []
        return [*found, *self.extra_checks(ctx)]


CPU = {"size": ["small"], "device": ["cpu"]}
QUICK = {"model": ["mlp"]}


@scenario("optimize.eager", grid={"model": MODELS, **CPU, "precision": ["fp32", "bf16"]}, requires=TORCH,
          profiles={"quick": {**QUICK, "precision": ["fp32"]},
                    "gpu": {"device": ["cuda"], "precision": ["fp32", "tf32", "fp16", "bf16"]}})
class Eager(OptimizeScenario):
    """The baseline row: eager fp32, and autocast (AMP) bf16/fp16; TF32 only on CUDA."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        if params["precision"] == "tf32" and params["device"] != "cuda":
            return [NotApplicable("TF32 is a CUDA tensor-core mode")]
        return super().requirements(params)

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        import copy

        import torch

        from reference.optimize import runtimes

        precision, device = ctx.params["precision"], ctx.params["device"]
        if device == "cuda":  # fp32 means fp32: TF32 only when asked for
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
            ctx.provenance["tf32"] = precision == "tf32"
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        model = copy.deepcopy(self.workload.model).to(device)
        return runtimes.torch_module(model, f"eager {device}" + (f" autocast {precision}" if autocast else ""),
                                     precision=precision, device=device, autocast=autocast)


@scenario("optimize.quant.torch_ao", grid={"model": MODELS, **CPU, "method": ["dynamic", "static"]}, requires=TORCH,
          profiles={"quick": {"model": ["mlp", "lstm"]}})
class TorchAoQuant(OptimizeScenario):
    """torch.ao (deprecated upstream, still deployed): dynamic INT8 of Linear/LSTM, and eager
    static PTQ with fusion, QuantStub/DeQuantStub, x86 qconfig and calibration."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        if params["method"] == "static" and params["model"] in STATIC_AO_UNSUPPORTED:
            return [NotApplicable(STATIC_AO_UNSUPPORTED[params["model"]])]
        return super().requirements(params)

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        from reference.optimize import quantize, runtimes
        from reference.optimize.runtimes import ConversionError

        model, engine = self.workload.model, quantize.quantized_engine()
        ctx.provenance.update(quantized_engine=engine, method=ctx.params["method"])
        if ctx.params["method"] == "dynamic":
            quantized = self.cold(ctx, "quantize", lambda: quantize.dynamic_ao(model, self.example))
        else:
            try:
                prepared, groups = quantize.prepare_static(model, engine)
                batches = self.cold(ctx, "calibrate", lambda: quantize.calibrate(prepared, self.workload.calibration))
                quantized = self.cold(ctx, "quantize", lambda: quantize.convert_static(prepared))
            except Exception as exc:  # noqa: BLE001 - reported with torch.ao's own message
                raise ConversionError("torch.ao static quantisation", exc) from exc
            ctx.provenance.update(fused=groups, calibration_batches=batches, qconfig=f"default {engine}",
                                  calibration_samples=len(self.workload.calibration))
        return runtimes.torch_module(quantized, f"torch.ao {ctx.params['method']} int8", precision="int8")


@scenario("optimize.quant.torchao", grid={"model": MODELS, **CPU, "config": ["int8_dynamic", "int8_weight_only"]},
          requires=TORCHAO, profiles={"quick": QUICK})
class TorchAoLibraryQuant(OptimizeScenario):
    """torchao quantize_: int8 dynamic activation + int8 weight, and int8 weight-only."""

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        from reference.optimize import quantize, runtimes

        config = ctx.params["config"]
        ctx.provenance["torchao_config"] = type(quantize.torchao_config(config)).__name__  # imports torchao untimed
        quantized = self.cold(ctx, "quantize", lambda: quantize.torchao_quantize(self.workload.model, config))
        return runtimes.torch_module(quantized, f"torchao {config}", precision=quantize.torchao_precision(config))


class OnnxScenario(OptimizeScenario):
    """Export to ONNX (recording the cost, opset and checker verdict) before building."""

    def export(self, ctx: RunContext, exporter: str):  # type: ignore[no-untyped-def]
        import onnx  # noqa: F401 - imported untimed, so the export metric is the export only
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401

        from reference.optimize import onnx_export

        exported = self.cold(ctx, "export", lambda: onnx_export.export(
            self.workload.model, self.example, self.workdir / f"model-{exporter}.onnx", exporter))
        self.checker_error = onnx_export.checker_error(exported.path)
        self.exported = exported
        ctx.provenance.update(exporter=exporter, opset=exported.opset, dynamic_axes={"input": {0: "batch"}})
        return exported

    def session(self, ctx: RunContext, path: Path, name: str, precision: str, provider: str = "cpu"):  # type: ignore[no-untyped-def]
        import torch

        from reference.optimize import onnx_runtime

        return self.cold(ctx, "session_load", lambda: onnx_runtime.ort_runtime(
            path, name, precision, provider, threads=torch.get_num_threads(),
            optimization=ctx.params.get("optimization", "all")))

    def extra_checks(self, ctx: RunContext) -> list[Check]:
        from reference.optimize import conformance

        return [conformance.onnx_checker_passes(self.checker_error, self.exported.opset),
                conformance.provider_is_requested(self.runtime.provenance)]


@scenario("optimize.onnx.ort", grid={"model": MODELS, "size": ["small"], "exporter": ["dynamo", "legacy"],
                                "provider": ["cpu"], "optimization": ["all"]},
          requires=ONNX, profiles={"quick": QUICK, "gpu": {"provider": ["cuda", "tensorrt"], "exporter": ["dynamo"]}})
class OnnxRuntime(OnnxScenario):
    """ONNX export (dynamo or legacy exporter) run by ONNX Runtime on an explicit provider."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        from reference.optimize.onnx_runtime import PROVIDER_CHAINS

        if params["provider"] == "cpu":
            return super().requirements(params)
        return [*super().requirements(params), Cuda(), OrtProvider(PROVIDER_CHAINS[params["provider"]][0])]

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        exported = self.export(ctx, ctx.params["exporter"])
        provider = ctx.params["provider"]
        # TensorRT EP builds fp32 engines with TF32 allowed, so it is judged in that tier.
        precision = "tf32" if provider == "tensorrt" else "fp32"
        return self.session(ctx, exported.path, f"onnxruntime {provider}", precision, provider)


@scenario("optimize.onnx.quant", grid={"model": MODELS, "size": ["small"], "exporter": ["dynamo"],
                                  "method": ["dynamic", "qdq", "qoperator"]},
          requires=ONNX, profiles={"quick": QUICK})
class OnnxQuant(OnnxScenario):
    """ONNX Runtime INT8: quant_pre_process, then quantize_dynamic, or quantize_static (QDQ or
    QOperator) calibrated by a CalibrationDataReader over the calibration split."""

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        from reference.optimize import onnx_runtime

        exported = self.export(ctx, ctx.params["exporter"])
        method = ctx.params["method"]
        ready = self.cold(ctx, "preprocess", lambda: onnx_runtime.preprocess(exported.path, self.workdir / "pre.onnx"))
        target = self.workdir / f"int8-{method}.onnx"
        if method == "dynamic":
            self.cold(ctx, "quantize", lambda: onnx_runtime.quantize_dynamic(ready, target))
        else:  # calibration runs inside quantize_static, so its cost is part of this one
            self.cold(ctx, "calibrate_quantize", lambda: onnx_runtime.quantize_static(
                ready, target, self.workload.calibration, method))
            ctx.provenance.update(calibration_samples=len(self.workload.calibration), calibrate_method="MinMax",
                                  per_channel=True)
        ctx.provenance["method"] = method
        return self.session(ctx, target, f"onnxruntime int8 {method}", "int8")

    def fp32_size(self) -> int:
        return self.exported.size_bytes


@scenario("optimize.torchscript", grid={"model": MODELS, **CPU, "mode": ["trace", "script"]}, requires=TORCH,
          profiles={"quick": QUICK})
class TorchScript(OptimizeScenario):
    """torch.jit.trace / torch.jit.script, saved and loaded back; the tracing pitfall on
    data-dependent control flow is detected and warned about."""

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        from reference.optimize import runtimes, torchscript

        mode = ctx.params["mode"]
        self.converted = self.cold(ctx, "convert", lambda: torchscript.convert(self.workload.model, self.example, mode))
        loaded, size = self.cold(ctx, "save_load", lambda: torchscript.save_and_load(
            self.converted.module, self.workdir / f"model-{mode}.pt"))
        ctx.provenance.update(mode=mode, tracer_warnings=self.converted.tracer_warnings)
        return runtimes.torch_module(loaded, f"torchscript {mode}", size_bytes=size)

    def extra_checks(self, ctx: RunContext) -> list[Check]:
        from reference.optimize import conformance, torchscript

        if not self.example.is_floating_point():
            return []  # the range-guard demo rescales float inputs; token ids have no range to guard
        model = self.workload.model
        if ctx.params["mode"] == "script":
            return [conformance.keeps_data_dependent_branches(
                lambda m, x: torchscript.convert(m, x, "script"), model, self.example)]
        return [conformance.trace_pitfall_flagged(torchscript.compare_with_eager, model, self.example)]


@scenario("optimize.compile", grid={"model": MODELS, **CPU, "mode": ["default"]}, requires=TORCH, timeout_s=900,
          profiles={"quick": QUICK,
                    "gpu": {"device": ["cuda"], "mode": ["default", "reduce-overhead", "max-autotune"]}})
class Compile(OptimizeScenario):
    """torch.compile with inductor; compile cost = the first call at the export batch."""

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        import copy

        import torch

        from reference.optimize import runtimes
        from reference.optimize.compile import compile_module

        device, mode = ctx.params["device"], ctx.params["mode"]
        compiled = compile_module(copy.deepcopy(self.workload.model).to(device), mode)
        example = self.example.to(device)
        with torch.no_grad():
            self.cold(ctx, "compile", lambda: compiled(example))
        ctx.provenance.update(compile_mode=mode, backend="inductor", torch=torch.__version__)
        return runtimes.torch_module(compiled, f"torch.compile {mode}", device=device,
                                     size_bytes=runtimes.state_dict_bytes(self.workload.model))


@scenario("optimize.export", grid={"model": MODELS, **CPU}, requires=TORCH,
          profiles={"quick": QUICK, "gpu": {"device": ["cuda"]}})
class Export(OptimizeScenario):
    """torch.export with a dynamic batch dimension, saved as .pt2 and loaded back."""

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        import copy

        from reference.optimize import runtimes
        from reference.optimize.compile import export_program, load_program

        device = ctx.params["device"]
        path = self.workdir / "model.pt2"
        model = copy.deepcopy(self.workload.model).to(device)
        size = self.cold(ctx, "export", lambda: export_program(model, self.example.to(device), path))
        loaded = self.cold(ctx, "load", lambda: load_program(path))
        return runtimes.torch_module(loaded, "torch.export .pt2", device=device, size_bytes=size)


@scenario("optimize.tensorrt",
          grid={"model": MODELS, "size": ["small"], "device": ["cuda"], "precision": ["fp16", "int8"]},
          requires=TENSORRT, profiles={"quick": QUICK, "gpu": {}})
class TensorRT(OptimizeScenario):
    """TensorRT 10: ONNX -> engine (FP16, or INT8 with an entropy calibrator), serialised and
    loaded back, run with torch CUDA tensors as buffers."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*self.requires, TensorRT10(), Cuda()]

    def build(self, ctx: RunContext):  # type: ignore[no-untyped-def]
        import tensorrt

        from reference.optimize import onnx_export, runtimes, tensorrt_engine

        precision = ctx.params["precision"]
        exported = self.cold(ctx, "export", lambda: onnx_export.export(
            self.workload.model, self.example, self.workdir / "model.onnx", "dynamo"))
        engine = self.cold(ctx, "engine_build", lambda: tensorrt_engine.build_engine(
            exported.path, precision, self.workload.calibration, max_batch=max(BATCH_SIZES)))
        size = tensorrt_engine.save_engine(engine, self.workdir / f"model-{precision}.engine")
        runner = self.cold(ctx, "engine_load", lambda: tensorrt_engine.EngineRunner(
            (self.workdir / f"model-{precision}.engine").read_bytes()))
        ctx.provenance.update(tensorrt=tensorrt.__version__, opset=exported.opset, engine_precision=precision)
        return runtimes.Runtime(name=f"tensorrt {precision}", precision=precision, infer=runner,
                                prepare=lambda x: x.to("cuda"), to_tensor=runtimes.to_cpu_float,
                                size_bytes=size, provenance={"device": "cuda"})
