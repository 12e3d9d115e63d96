"""`correction.reject`, the verdict a monitor acts on: the boundary (p == alpha is a
rejection), the defaults (Benjamini-Hochberg at 0.05), the method reaching `adjust`, and
alpha outside (0, 1) refused. Written against mutants `nox -s mutate` found alive."""

from __future__ import annotations

import numpy as np
import pytest

from reference.monitoring import correction


def test_a_pvalue_equal_to_alpha_is_rejected_and_one_above_is_not() -> None:
    assert correction.reject(np.array([0.05])).tolist() == [True]  # default alpha 0.05, family of one
    assert correction.reject(np.array([0.05 + 1e-9])).tolist() == [False]
    assert correction.reject(np.array([0.2]), alpha=0.2).tolist() == [True]


def test_the_default_is_benjamini_hochberg_and_the_method_is_passed_on() -> None:
    p = np.array([0.03, 0.04])  # BH: both adjusted to 0.04; Bonferroni: 0.06 and 0.08
    assert correction.reject(p).tolist() == [True, True]
    assert correction.reject(p, method="bh").tolist() == [True, True]
    assert correction.reject(p, method="bonferroni").tolist() == [False, False]
    assert correction.reject(np.array([0.03, 0.9]), method="none").tolist() == [True, False]


def test_untested_features_are_never_rejected_and_do_not_count_in_the_family() -> None:
    assert correction.reject(np.array([0.04, np.nan])).tolist() == [True, False]


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1])
def test_alpha_outside_the_open_unit_interval_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        correction.reject(np.array([0.5]), alpha=alpha)
