"""KS edges written against mutants `nox -s mutate` found alive: a column subset of a
one-shot (unsorted, keep=False) reference, and the Massart bound reported for the
asymptotic p-values below TAIL. Survivors that only
change how work is grouped (_groups_by_cost, buffer padding) or the order of two sizes in a
symmetric formula are equivalent and listed in the mutation report."""

from __future__ import annotations

import numpy as np
import pytest

from reference.monitoring import ks


@pytest.mark.parametrize("keep", [True, False])
def test_a_subset_of_the_reference_tests_exactly_those_columns(keep: bool) -> None:
    rng = np.random.default_rng(11)
    reference, current = rng.normal(size=(300, 5)), rng.normal(size=(200, 5)) + np.linspace(0, 0.5, 5)
    columns = np.array([4, 1, 3])
    part = ks.SortedReference(reference, keep=keep).subset(columns)
    got, expected = ks.ks_2samp_columns(part, current[:, columns]), ks.ks_2samp_columns(reference[:, columns],
                                                                                         current[:, columns])
    assert np.array_equal(got.statistic, expected.statistic) and np.array_equal(got.pvalue, expected.pvalue)


def test_below_tail_the_asymptotic_pvalue_is_massarts_bound() -> None:
    n1, n2 = 20_000, 30_000
    n = round(n1 * n2 / (n1 + n2))
    statistic = np.array([0.02, 0.05])  # the second is far in the tail
    pvalue, bounded = ks.asymptotic_pvalues(statistic * n1 * n2, n1, n2)
    massart = 2.0 * np.exp(-2.0 * n * statistic[1] ** 2)
    assert massart <= ks.TAIL and bounded.tolist() == [False, True]
    assert pvalue[1] == pytest.approx(massart, rel=1e-12)

