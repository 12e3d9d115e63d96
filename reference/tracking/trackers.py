"""The three trackers behind one interface, chosen by name (each tool is imported only when
asked for). A tracker: start(run_name, params), log_metrics(step, metrics), flush(),
log_artifact(name, bytes), log_model(model, example), finish(), locator(); and the static
read(locator) -> RunData through the tool's own reader, as_stored(RunData) -> RunData."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

TOOLS = {
    "mlflow": ("reference.tracking.mlflow_tracker", "MlflowTracker"),
    "tensorboard": ("reference.tracking.tensorboard_tracker", "TensorBoardTracker"),
    "wandb": ("reference.tracking.wandb_tracker", "WandbTracker"),
}
# The logging modes each tool offers, as constructor options: every conformance property
# (a killed run's durability above all) must hold in each, not only in the default one.
MODES: dict[str, dict[str, dict[str, Any]]] = {
    "mlflow": {"sync": {"synchronous": True}, "async": {"synchronous": False}},
    "tensorboard": {"default": {}},
    "wandb": {"default": {}},
}


def tracker_class(tool: str) -> Any:
    """A tool by name, or any tracker class named as "package.module:Class"."""
    if ":" in tool:
        module, name = tool.split(":", 1)
    elif tool in TOOLS:
        module, name = TOOLS[tool]
    else:
        raise ValueError(f"unknown tracking tool {tool!r}; choose {', '.join(TOOLS)} or give module:Class")
    return getattr(importlib.import_module(module), name)


def create(tool: str, root: Path, **options: Any) -> Any:
    return tracker_class(tool)(root, **options)
