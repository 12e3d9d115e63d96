"""What a tracked run holds, as logged or as read back, and an exact comparison of the two.

Each tool keeps some values in its own representation (MLflow stores params as strings,
TensorBoard stores hparams numbers as doubles); a tracker's `as_stored` states that
representation, and everything else must come back bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Series = list[tuple[int, float]]  # (step, value), ascending steps


@dataclass
class RunData:
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Series] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # the tool's latest value per metric
    finished: bool = False
    model: dict[str, np.ndarray] | None = None  # a logged model's weights, where the tool keeps them
    graph_ops: tuple[str, ...] = ()  # a logged model's graph (node names; expected: name fragments)


def latest(metrics: dict[str, Series]) -> dict[str, float]:
    """The value at each series' highest step: what trackers show as a run's summary."""
    return {key: max(series)[1] for key, series in metrics.items() if series}


def _same_value(a: Any, b: Any) -> bool:
    """Exact equality, with NaN equal to NaN (a NaN logged must come back as NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def differences(expected: RunData, actual: RunData, *, compare_model: bool, compare_graph: bool) -> list[str]:
    """Every way `actual` differs from `expected`; empty when the round trip is exact."""
    found = []
    for key in sorted(set(expected.params) | set(actual.params)):
        a, b = expected.params.get(key, "<absent>"), actual.params.get(key, "<absent>")
        if not _same_value(a, b):
            found.append(f"param {key}: logged {a!r}, read {b!r}")
    for key in sorted(set(expected.metrics) | set(actual.metrics)):
        logged, read = expected.metrics.get(key, []), actual.metrics.get(key, [])
        if len(logged) != len(read):
            found.append(f"metric {key}: {len(logged)} steps logged, {len(read)} read")
        bad = [(s1, v1, s2, v2) for (s1, v1), (s2, v2) in zip(logged, read, strict=False)
               if s1 != s2 or not _same_value(v1, v2)]
        found += [f"metric {key}: logged step {s1} = {v1!r}, read step {s2} = {v2!r}" for s1, v1, s2, v2 in bad[:3]]
    for name in sorted(set(expected.artifacts) | set(actual.artifacts)):
        a, b = expected.artifacts.get(name), actual.artifacts.get(name)
        if a != b:
            found.append(f"artifact {name}: {len(a) if a is not None else 'no'} bytes logged, "
                         f"{len(b) if b is not None else 'no'} bytes read, contents differ")
    for key in sorted(set(expected.summary) | set(actual.summary)):
        a, b = expected.summary.get(key, "<absent>"), actual.summary.get(key, "<absent>")
        if not _same_value(a, b):
            found.append(f"summary {key}: expected {a!r}, read {b!r}")
    if expected.finished != actual.finished:
        found.append(f"finished: expected {expected.finished}, read {actual.finished}")
    if compare_model:
        found += _model_differences(expected.model or {}, actual.model)
    if compare_graph:
        missing = [f for f in expected.graph_ops if not any(f in op for op in actual.graph_ops)]
        if missing or not actual.graph_ops:
            found.append(f"graph: {len(actual.graph_ops)} nodes read, parameters {missing[:5]} missing")
    return found


def _model_differences(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray] | None) -> list[str]:
    if actual is None:
        return ["model: none read back"]
    if set(expected) != set(actual):
        return [f"model: tensors {sorted(set(expected) ^ set(actual))} differ in name"]
    return [f"model: tensor {name} differs" for name in sorted(expected)
            if expected[name].dtype != actual[name].dtype or not np.array_equal(expected[name], actual[name])]


def state_of(model: Any) -> dict[str, np.ndarray]:
    """A torch module's weights as numpy arrays (what a model round trip compares)."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in model.state_dict().items()}


def graph_fragments(model: Any) -> tuple[str, ...]:
    """How each parameter appears in a traced graph's node names ("Linear[0]/weight" for
    parameter "0.weight"): a read-back graph must contain them all."""
    fragments = []
    for name, _ in model.named_parameters():
        *path, leaf = name.split(".")
        fragments.append(f"[{path[-1]}]/{leaf}" if path else leaf)
    return tuple(fragments)


def sample_values(seed: int, keys: list[str], steps: int) -> dict[str, Series]:
    """Seeded metric series with awkward doubles (tiny, huge, negative, many digits), so a
    tracker that rounds or casts to float32 is caught."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-12, 12, size=len(keys))
    return {key: [(step, float(scale * rng.standard_normal())) for step in range(steps)]
            for key, scale in zip(keys, scales, strict=True)}


def value_at(seed: int, key_index: int, step: int) -> float:
    """One value of a stream that a killed process and its parent can both regenerate."""
    return float(np.random.default_rng([seed, key_index, step]).standard_normal() * 10.0 ** (key_index - 3))
