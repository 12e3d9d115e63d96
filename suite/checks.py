"""Building blocks for conformance checks: tensors against an fp64 golden run by dtype tier,
and bounds on observed values. Each returns a `Check` that says what it compared."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from suite.schema import Check

# Relative error allowed against the fp64 golden result: max|x - golden| / max|golden|.
# INT8 has no tier: quantised models are judged by task accuracy, not by tensors.
TIERS: dict[str, float] = {
    "fp64": 1e-12,
    "fp32": 1e-5,
    "tf32": 5e-3,
    "fp16": 1e-2,
    "bf16": 5e-2,
}


def as_float64(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def relative_error(candidate: Any, golden: Any) -> float:
    c, g = as_float64(candidate), as_float64(golden)
    if c.shape != g.shape:
        raise ValueError(f"shape {c.shape} does not match golden {g.shape}")
    if not np.all(np.isfinite(c)):
        return float("inf")
    scale = max(float(np.max(np.abs(g))) if g.size else 0.0, np.finfo(np.float64).tiny)
    return float(np.max(np.abs(c - g))) / scale if c.size else 0.0


def close_to_golden(name: str, candidate: Any, golden: Any, tier: str,
                    baseline: Any | None = None) -> Check:
    """Candidate within its dtype tier of the fp64 golden result. When the fp32 baseline is
    given too, its own error is reported, so a reader sees both against the same truth."""
    tolerance = TIERS[tier]
    error = relative_error(candidate, golden)
    detail = f"relative error vs fp64 golden, {tier} tier"
    if baseline is not None:
        detail += f"; baseline error {relative_error(baseline, golden):.3g}"
    return Check(name=name, passed=error <= tolerance, observed=error, tolerance=tolerance,
                 reference="fp64 golden", detail=detail)


def all_close_to_golden(name: str, pairs: Iterable[tuple[Any, Any]], tier: str) -> Check:
    """Worst relative error over many tensors (every parameter of a model, say)."""
    errors = [relative_error(c, g) for c, g in pairs]
    worst = max(errors) if errors else 0.0
    tolerance = TIERS[tier]
    return Check(name=name, passed=worst <= tolerance, observed=worst, tolerance=tolerance,
                 reference="fp64 golden",
                 detail=f"worst relative error over {len(errors)} tensors, {tier} tier")


def at_least(name: str, observed: float, bound: float, reference: str, detail: str = "") -> Check:
    return Check(name=name, passed=bool(observed >= bound), observed=float(observed),
                 tolerance=float(bound), reference=reference, detail=detail)


def at_most(name: str, observed: float, bound: float, reference: str, detail: str = "") -> Check:
    return Check(name=name, passed=bool(observed <= bound), observed=float(observed),
                 tolerance=float(bound), reference=reference, detail=detail)


def holds(name: str, condition: bool, reference: str, detail: str = "") -> Check:
    """A yes/no property (the bf16 path uses no scaler, say)."""
    return Check(name=name, passed=bool(condition), reference=reference, detail=detail)
