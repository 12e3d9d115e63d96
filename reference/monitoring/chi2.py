"""Chi-square test of homogeneity for categorical features, vectorised over features.

Each feature is a 2 x K table (reference counts, current counts) over its categories; the
tables are padded to a common K with zero columns, which are left out of the test exactly
as `scipy.stats.chi2_contingency` would never see them. The statistic, degrees of freedom,
Yates' correction when there is one degree of freedom, and `p = chi2.sf(stat, dof)` follow
scipy's `chi2_contingency(table)` with its default `correction=True`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2


@dataclass(frozen=True)
class Chi2Result:
    statistic: np.ndarray
    pvalue: np.ndarray
    dof: np.ndarray


def chi2_homogeneity(reference_counts: np.ndarray, current_counts: np.ndarray,
                     correction: bool = True) -> Chi2Result:
    """Counts have shape (features, categories); a category absent from both is ignored."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 2:
        raise ValueError(f"count tables must both be (features, categories), got {ref.shape} and {cur.shape}")
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("counts must be non-negative")
    if (ref.sum(axis=1) == 0).any() or (cur.sum(axis=1) == 0).any():
        raise ValueError("every feature needs at least one count in each window")
    observed = np.stack([ref, cur], axis=1)  # (features, 2, categories)
    column_totals = observed.sum(axis=1)
    present = column_totals > 0
    dof = present.sum(axis=1) - 1
    expected = observed.sum(axis=2)[:, :, None] * column_totals[:, None, :] / observed.sum(axis=(1, 2))[:, None, None]
    if correction:
        yates = (dof == 1)[:, None, None]
        gap = expected - observed
        observed = np.where(yates, observed + np.sign(gap) * np.minimum(0.5, np.abs(gap)), observed)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(present[:, None, :], (observed - expected) ** 2 / expected, 0.0)
    statistic = np.where(dof > 0, terms.sum(axis=(1, 2)), 0.0)
    pvalue = np.where(dof > 0, chi2.sf(statistic, np.maximum(dof, 1)), 1.0)
    return Chi2Result(statistic, pvalue, dof)
