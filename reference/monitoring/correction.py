"""Multiple-testing correction across features: Bonferroni (family-wise error rate) and
Benjamini-Hochberg (false discovery rate, the default).

Testing 100 features at p < 0.05 each raises at least one false alarm with probability
1 - 0.95**100 = 99.4% when nothing drifted. Adjusted p-values are compared with alpha
instead; NaN p-values (features that could not be tested) are left out of the family.
"""

from __future__ import annotations

import numpy as np

CORRECTIONS = ("bh", "bonferroni", "none")


def adjust(pvalues: np.ndarray, method: str = "bh") -> np.ndarray:
    """Adjusted p-values along the last axis (one family per row)."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    p = np.asarray(pvalues, dtype=np.float64)
    finite = p[~np.isnan(p)]
    if ((finite < 0) | (finite > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    family = (~np.isnan(p)).sum(axis=-1, keepdims=True)
    if method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * family, 1.0)
    order = np.argsort(p, axis=-1)  # NaN sorts last
    ranked = np.take_along_axis(p, order, axis=-1)
    rank = np.arange(1, p.shape[-1] + 1)
    scaled = np.where(np.isnan(ranked), np.inf, ranked * family / rank)
    stepped = np.minimum.accumulate(scaled[..., ::-1], axis=-1)[..., ::-1]
    stepped = np.where(np.isnan(ranked), np.nan, np.minimum(stepped, 1.0))
    adjusted = np.empty_like(stepped)
    np.put_along_axis(adjusted, order, stepped, axis=-1)
    return adjusted


def reject(pvalues: np.ndarray, alpha: float = 0.05, method: str = "bh") -> np.ndarray:
    """True where the feature is declared drifted (False for untested NaN entries)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    adjusted = adjust(pvalues, method)
    return np.where(np.isnan(adjusted), False, adjusted <= alpha)
