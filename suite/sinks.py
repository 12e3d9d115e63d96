"""Record sinks: where `mlsuite run --track TOOL` sends each record as it is written
(an experiment tracker, say). Families register them from a `sinks` module, found the way
scenarios are, so the harness names no tool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from suite import registry
from suite.errors import SuiteError
from suite.schema import Record

Sink = Callable[..., Any]  # sink(record, *, root: Path)
_SINKS: dict[str, Sink] = {}


def register_sink(name: str, sink: Sink) -> None:
    _SINKS[name] = sink


def sink_for(name: str, root: Path, packages: tuple[str, ...] = registry.DEFAULT_PACKAGES) -> Callable[[Record], Any]:
    """The sink named `name`, bound to its store under root."""
    broken = registry.discover(packages, leaf="sinks")
    if name not in _SINKS:
        known = ", ".join(sorted(_SINKS)) or "none"
        problems = "".join(f"; {module}: {error}" for module, error in broken.items())
        raise SuiteError(f"--track {name}: no such sink (available: {known}){problems}")
    sink = _SINKS[name]
    return lambda record: sink(record, root=root)
