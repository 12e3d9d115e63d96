"""TorchScript: trace and script, save and load, and the tracing pitfall made visible.

`torch.jit.trace` runs the model once and records the operations that ran: any Python
`if` on tensor *values* is frozen to the branch the example took. `torch.jit.script`
compiles the source and keeps both branches. `compare_with_eager` probes a converted module
on inputs other than the example and warns when it disagrees with eager.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reference.optimize.runtimes import ConversionError

MODES = ("trace", "script")
DIVERGENCE_TOLERANCE = 1e-5  # fp32: the same graph must agree with eager this closely


class TraceDivergenceWarning(UserWarning):
    """A converted module disagrees with eager on inputs other than its example."""


@dataclass(frozen=True)
class Converted:
    module: torch.jit.ScriptModule
    mode: str
    tracer_warnings: list[str] = field(default_factory=list)  # what torch said while tracing


def convert(model: nn.Module, example: torch.Tensor, mode: str) -> Converted:
    if mode not in MODES:
        raise ValueError(f"unknown TorchScript mode {mode!r}; choose trace or script")
    model = model.eval()
    try:
        if mode == "script":
            return Converted(torch.jit.script(model), mode)
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, (example,))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"torch.jit.{mode}", exc) from exc
    notes = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return Converted(traced, mode, notes)


def save_and_load(module: torch.jit.ScriptModule, path: Path) -> tuple[torch.jit.ScriptModule, int]:
    """Round-trip through a file, as a deployment would; returns the loaded module and its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path))
    return torch.jit.load(str(path)), path.stat().st_size


def relative_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    return float((candidate - reference).abs().max() / scale)


@dataclass(frozen=True)
class Divergence:
    errors: list[float]  # relative error vs eager, one per probe
    tolerance: float
    tracer_warnings: list[str]

    @property
    def diverged(self) -> bool:
        return any(e > self.tolerance for e in self.errors)

    def describe(self) -> str:
        worst = max(self.errors, default=0.0)
        text = f"worst relative error vs eager {worst:.3g} over {len(self.errors)} probes"
        if self.tracer_warnings:
            text += f"; tracer said: {self.tracer_warnings[0][:200]}"
        return text


@torch.no_grad()
def compare_with_eager(eager: nn.Module, converted: Converted, probes: Sequence[torch.Tensor],
                       tolerance: float = DIVERGENCE_TOLERANCE) -> Divergence:
    """Run both on every probe; warn (TraceDivergenceWarning) when they disagree."""
    eager = eager.eval()
    errors = [relative_error(converted.module(p).float(), eager(p).float()) for p in probes]
    result = Divergence(errors, tolerance, converted.tracer_warnings)
    if result.diverged:
        warnings.warn(f"torch.jit.{converted.mode} output differs from eager: {result.describe()}. "
                      f"Data-dependent control flow was probably frozen by tracing; use torch.jit.script.",
                      TraceDivergenceWarning, stacklevel=2)
    return result
