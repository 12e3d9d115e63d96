"""torch.compile (inductor) and torch.export with a .pt2 file.

torch.compile is lazy: the graph is captured and compiled on the first call, and again on
the first call at a new shape (batch 1 is always specialised), so its cost is measured as
the first call at each batch size. torch.export captures one graph ahead of time with a
dynamic batch dimension; the saved .pt2 is loaded back and run as a module.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

from reference.optimize.runtimes import ConversionError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MAX_BATCH = 4096


def compile_module(model: nn.Module, mode: str = "default") -> nn.Module:
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    return cast(nn.Module, torch.compile(model.eval(), mode=mode, backend="inductor"))


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> int:
    """torch.export with batch dynamic, saved as .pt2; returns the file's size."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError("torch.export.export", exc) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path.stat().st_size


def load_program(path: Path) -> nn.Module:
    """The saved program as a callable module (runs the exported graph eagerly)."""
    return torch.export.load(str(path)).module()
