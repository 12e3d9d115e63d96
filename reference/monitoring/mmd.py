"""Multivariate drift: maximum mean discrepancy (MMD) with a Gaussian kernel and a
permutation test.

Per-feature tests miss a change in how features move together (a correlation that flips
while every marginal stays put); MMD compares whole joint distributions. Features are
standardised by the reference, the bandwidth is the median pairwise distance of the pooled
sample, and the p-value is (1 + #{permuted MMD^2 >= observed}) / (1 + permutations), which
is a valid p-value for any number of permutations. All permutations are one matrix product:
MMD^2 = a' K a with a = +1/n1 on reference rows and -1/n2 on current rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MMDResult:
    statistic: float  # biased MMD^2 estimate
    pvalue: float
    permutations: int
    bandwidth: float
    rows_used: tuple[int, int]


def mmd_permutation_test(reference: np.ndarray, current: np.ndarray, *, permutations: int = 200,
                         max_rows: int = 500, seed: int = 0) -> MMDResult:
    """Two-sample MMD test on (rows, features) arrays; each window is subsampled to max_rows."""
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    rng = np.random.default_rng(seed)
    ref, cur = (_subsample(np.asarray(x, dtype=np.float64), max_rows, rng) for x in (reference, current))
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError(f"windows must be (rows, features) with equal features, got {ref.shape}, {cur.shape}")
    if min(len(ref), len(cur)) < 2:
        raise ValueError("each window needs at least 2 rows")
    if not (np.isfinite(ref).all() and np.isfinite(cur).all()):
        raise ValueError("MMD needs finite values; drop NaN/inf features first")
    scale = ref.std(axis=0)
    scale[scale == 0] = 1.0
    pooled = (np.concatenate([ref, cur]) - ref.mean(axis=0)) / scale
    squared = _squared_distances(pooled)
    off_diagonal = squared[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.sqrt(np.median(off_diagonal))) or 1.0
    kernel = np.exp(-squared / (2.0 * bandwidth**2))
    n1, n2 = len(ref), len(cur)
    labels = np.concatenate([np.full(n1, 1.0 / n1), np.full(n2, -1.0 / n2)])
    shuffled = np.stack([labels] + [rng.permutation(labels) for _ in range(permutations)])
    statistics = np.einsum("pi,pi->p", shuffled @ kernel, shuffled)
    observed = float(statistics[0])
    pvalue = (1 + int((statistics[1:] >= observed - 1e-12 * abs(observed)).sum())) / (1 + permutations)
    return MMDResult(observed, pvalue, permutations, bandwidth, (n1, n2))


def _subsample(data: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(data) <= max_rows:
        return data
    return data[rng.choice(len(data), size=max_rows, replace=False)]


def _squared_distances(x: np.ndarray) -> np.ndarray:
    norms = (x * x).sum(axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * x @ x.T, 0.0)
