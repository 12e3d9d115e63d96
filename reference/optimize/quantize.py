"""INT8 post-training quantisation in PyTorch, both upstream paths kept side by side:

- torch.ao.quantization (deprecated upstream, still what many deployments run): dynamic
  quantisation of Linear/LSTM, and eager static quantisation with QuantStub/DeQuantStub,
  module fusion, the x86 (fbgemm successor) qconfig and a calibration pass;
- torchao `quantize_`: int8 dynamic activation + int8 weight, and int8 weight-only.

Every function works on a copy and leaves the fp32 model untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from reference.optimize.runtimes import ConversionError

ENGINE_PREFERENCE = ("x86", "fbgemm", "qnnpack")  # x86 supersedes fbgemm on x86 CPUs
FUSABLE = (  # longest first: (Conv, BN, ReLU) must win over (Conv, BN)
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d, nn.ReLU),
    (nn.Linear, nn.BatchNorm1d), (nn.Linear, nn.ReLU),
)
# name -> (the torchao.quantization config class, its keyword arguments, the precision it ships)
TORCHAO_CONFIGS: dict[str, tuple[str, dict, str]] = {
    "int8_dynamic": ("Int8DynamicActivationInt8WeightConfig", {}, "int8"),
    "int8_weight_only": ("Int8WeightOnlyConfig", {}, "int8"),
}


def quantized_engine() -> str:
    """The best quantised kernel library this build of torch offers on this CPU."""
    supported = torch.backends.quantized.supported_engines
    engine = next((e for e in ENGINE_PREFERENCE if e in supported), None)
    if engine is None:
        raise RuntimeError(f"no INT8 engine among {supported}")
    return engine


def dynamic_ao(model: nn.Module, example: torch.Tensor,
               modules: Iterable[type[nn.Module]] = (nn.Linear, nn.LSTM)) -> nn.Module:
    """Weights INT8 ahead of time, activations quantised on the fly per batch. The result is
    called once on `example`: some modules only fail when run (nn.TransformerEncoderLayer's
    fast path reads `.weight.device`, which a quantised Linear no longer has)."""
    torch.backends.quantized.engine = quantized_engine()
    try:
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), set(modules),
                                                           dtype=torch.qint8)
        with torch.no_grad():
            quantized(example)
    except Exception as exc:  # noqa: BLE001 - a failed conversion is reported with its own message
        raise ConversionError("torch.ao quantize_dynamic", exc) from exc
    return quantized


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """Names of adjacent (Conv|Linear)[, BN][, ReLU] runs inside every nn.Sequential."""
    groups = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        i = 0
        while i < len(children):
            pattern = next((p for p in FUSABLE if len(children) - i >= len(p)
                            and all(type(children[i + k][1]) is t for k, t in enumerate(p))), None)
            if pattern is None:
                i += 1
                continue
            groups.append([f"{prefix}.{name}" if prefix else name for name, _ in children[i:i + len(pattern)]])
            i += len(pattern)
    return groups


class StaticQuantWrapper(nn.Module):
    """Float in, float out: QuantStub quantises the input with calibrated scale/zero point,
    DeQuantStub turns the INT8 result back into float."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.model = model
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(x)))


def prepare_static(model: nn.Module, engine: str | None = None) -> tuple[nn.Module, list[list[str]]]:
    """Copy, fuse, wrap and insert observers; returns the prepared model and what was fused."""
    engine = engine or quantized_engine()
    torch.backends.quantized.engine = engine
    candidate = copy.deepcopy(model).eval()
    groups = fusion_groups(candidate)
    if groups:
        candidate = torch.ao.quantization.fuse_modules(candidate, groups)
    wrapped = StaticQuantWrapper(candidate).eval()
    wrapped.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    return torch.ao.quantization.prepare(wrapped), groups


@torch.no_grad()
def calibrate(prepared: nn.Module, calibration: torch.Tensor, batch_size: int = 64) -> int:
    """Run calibration data through the observers; returns the number of batches seen."""
    batches = 0
    for start in range(0, len(calibration), batch_size):
        prepared(calibration[start:start + batch_size])
        batches += 1
    return batches


def convert_static(prepared: nn.Module) -> nn.Module:
    return torch.ao.quantization.convert(prepared)


def static_ao(model: nn.Module, calibration: torch.Tensor, engine: str | None = None) -> nn.Module:
    """Eager static PTQ end to end; a model eager mode cannot quantise raises ConversionError."""
    try:
        prepared, _ = prepare_static(model, engine)
        calibrate(prepared, calibration)
        quantized = convert_static(prepared)
        with torch.no_grad():
            quantized(calibration[:2])  # unsupported modules only fail when called
    except Exception as exc:  # noqa: BLE001
        raise ConversionError("torch.ao static quantisation", exc) from exc
    return quantized


def torchao_config(name: str):  # type: ignore[no-untyped-def]
    import torchao.quantization

    if name not in TORCHAO_CONFIGS:
        raise ValueError(f"unknown torchao config {name!r}; choose from {', '.join(TORCHAO_CONFIGS)}")
    class_name, kwargs, _ = TORCHAO_CONFIGS[name]
    return getattr(torchao.quantization, class_name)(**kwargs)


def torchao_precision(name: str) -> str:
    """The precision a torchao config ships (int8, int4, ...): quantised runtimes are judged
    by accuracy, whatever their bit width."""
    return TORCHAO_CONFIGS[name][2]


def torchao_quantize(model: nn.Module, config: str) -> nn.Module:
    """torchao `quantize_` on a copy: Linear weights become quantised tensor subclasses."""
    from torchao.quantization import quantize_

    chosen = torchao_config(config)
    candidate = copy.deepcopy(model).eval()
    try:
        quantize_(candidate, chosen)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"torchao quantize_ ({config})", exc) from exc
    return candidate
