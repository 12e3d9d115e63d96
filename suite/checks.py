"""Building blocks for conformance checks: tensors against an fp64 golden run by dtype tier,
and bounds on observed values. Each returns a `Check` that says what it compared.

A check's id is its name. Each family declares every id it can emit in a `CHECK_IDS` tuple at
the top of its conformance module; `<part>` stands for a piece filled in at run time (a
storage, a tool). `declared_check_ids()` lists them without running or importing anything,
so every check can be tied to the planted bug that makes it fail."""

from __future__ import annotations

import ast
import importlib.util
import math
import re
from collections.abc import Iterable
from pathlib import Path
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


def ratio_within(name: str, value: float, ci_low: float, ci_high: float, n: int, tolerance: float,
                 reference: str, detail: str = "", *, worse: str | None = None) -> Check:
    """A ratio whose CI must lie within 1 +- tolerance. Passed when it does, failed when
    the whole CI lies outside (a disagreement shown), else inconclusive, with about how many
    more samples would pull the CI off the band's edge it crosses (its arms shrink as
    1/sqrt(n) around the estimate). `worse` ("low" or "high") makes it one-sided: only
    that edge of the band counts, a ratio beyond the other one is fine."""
    band_low = 1.0 - tolerance if worse != "high" else -math.inf
    band_high = 1.0 + tolerance if worse != "low" else math.inf
    edges = [edge for edge in (band_low, band_high) if math.isfinite(edge)]
    worst = max(1.0 - ci_low if worse != "high" else 0.0, ci_high - 1.0 if worse != "low" else 0.0)
    shown_apart = ci_low > band_high or ci_high < band_low
    check = Check(name=name, passed=band_low <= ci_low and ci_high <= band_high, observed=worst, tolerance=tolerance,
                  reference=reference, detail=detail)
    if check.passed or shown_apart:
        return check
    # each CI bound that lies across a band edge from the estimate: its arm / the estimate's distance to that edge
    spans = [(bound - value) / (edge - value) for bound in (ci_low, ci_high) for edge in edges
             if edge != value and (bound - edge) * (value - edge) < 0]
    more = (f"about {max(1, math.ceil(n * max(spans) ** 2) - n)} more samples would settle it" if spans
            else "the estimate sits on the band's edge")
    band = f"+-{tolerance:.0%}" if worse is None else f"{edges[0]:.2f}"
    return check.model_copy(update={"inconclusive": True, "detail": f"{detail}; the CI straddles {band}: {more}"})


def holds(name: str, condition: bool, reference: str, detail: str = "") -> Check:
    """A yes/no property (the bf16 path uses no scaler, say)."""
    return Check(name=name, passed=bool(condition), reference=reference, detail=detail)


# -- check ids ---------------------------------------------------------------------------------

CHECK_ID = re.compile(r"^[a-z<][a-z0-9_<>]*(\.[a-z0-9_<>]+)+$")
PLACEHOLDER = re.compile(r"<[a-z_]+>")


def declared_check_ids(packages: tuple[str, ...] = ("reference",), leaf: str = "conformance"
                       ) -> dict[str, tuple[str, ...]]:
    """{family: its CHECK_IDS} for every `<package>.<family>.<leaf>` module, read from the
    source: conformance modules import torch, listing their checks must not."""
    found: dict[str, tuple[str, ...]] = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations if spec and spec.submodule_search_locations else []:
            for module in sorted(Path(folder).glob(f"*/{leaf}.py")):
                found[module.parent.name] = _check_ids_in(module)
    return found


def _check_ids_in(module: Path) -> tuple[str, ...]:
    for node in ast.parse(module.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "CHECK_IDS" and node.value is not None:  # type: ignore[attr-defined]
            ids = ast.literal_eval(node.value)  # type: ignore[attr-defined]
            bad = [i for i in ids if not isinstance(i, str) or not CHECK_ID.match(i)]
            if bad or len(set(ids)) != len(ids):
                raise ValueError(f"{module}: CHECK_IDS malformed or repeated: {bad or ids}")
            return tuple(ids)
    raise ValueError(f"{module} declares no CHECK_IDS")


def matches_id(name: str, check_id: str) -> bool:
    """Whether a check's name is an instance of the id (`<part>` matches any non-empty text)."""
    pattern = ".+".join(re.escape(piece) for piece in PLACEHOLDER.split(check_id))
    return re.fullmatch(pattern, name) is not None
