"""The drift scenario times the detector (a fitted, sorted reference cut to the testable
columns), so its check must cover that path too: the detector's KS equals
ks_2samp_columns on the same columns, and a planted bug in the cut is caught."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pandas")

from reference.monitoring import conformance, ks  # noqa: E402
from reference.monitoring.drift import DriftDetector  # noqa: E402


def windows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    reference, current = rng.normal(size=(400, 6)), rng.normal(size=(300, 6))
    current[:, 2:] += np.linspace(0.0, 0.4, 4)  # different evidence per column, so a mix-up shows
    return reference, current


def test_the_detector_path_equals_the_columns_ks() -> None:
    check = conformance.detector_matches_columns_ks(DriftDetector, *windows())
    assert check.passed and check.observed == 0.0, check


@pytest.mark.breaks("drift.detector_ks_equals_columns_ks")
def test_a_cut_that_takes_the_first_columns_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: SortedReference.subset ignores which columns it was asked for."""
    original = ks.SortedReference.subset
    monkeypatch.setattr(ks.SortedReference, "subset", lambda self, columns: original(self, np.arange(len(columns))))
    check = conformance.detector_matches_columns_ks(DriftDetector, *windows())
    assert not check.passed and check.observed > 0.01, check
