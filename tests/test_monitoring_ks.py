"""Vectorised two-sample KS against scipy's per-column ks_2samp, and the p-value conformance
check against deliberately broken implementations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("scipy")

from scipy import stats  # noqa: E402

from reference.monitoring import ks  # noqa: E402
from reference.monitoring.conformance import ks_matches_scipy, scipy_ks_loop, scipy_ks_method  # noqa: E402


def windows(n1: int, n2: int, columns: int, seed: int = 0, shift: float = 0.2,
            rounded: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Normal columns, the current window shifted by up to `shift`; the first `rounded`
    columns rounded to integers so ties within and across windows occur."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(n1, columns))
    current = rng.normal(size=(n2, columns)) + shift * np.arange(columns) / columns
    reference[:, :rounded] = np.round(reference[:, :rounded])
    current[:, :rounded] = np.round(current[:, :rounded])
    return reference, current


@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")
@pytest.mark.parametrize(("n1", "n2"), [(60, 60), (200, 150), (7, 30), (1000, 300), (2500, 2500),
                                        (12_000, 9_000), (15_000, 15_000)])
def test_statistic_and_pvalue_equal_scipy(n1: int, n2: int) -> None:
    reference, current = windows(n1, n2, 24, seed=n1 + n2)
    result = ks.ks_2samp_columns(reference, current)
    statistic, pvalue = scipy_ks_loop(reference, current)
    assert result.method == scipy_ks_method(n1, n2)
    np.testing.assert_allclose(result.statistic, statistic, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.pvalue, pvalue, rtol=0, atol=1e-10)


def test_where_scipys_exact_value_leaves_0_1_both_fall_back_to_asymptotic() -> None:
    reference, current = windows(60, 60, 24, seed=120)
    with pytest.warns(RuntimeWarning, match="Exact calculation unsuccessful"):
        _, pvalue = scipy_ks_loop(reference[:, 2:3], current[:, 2:3])
    assert 0.999 < pvalue[0] < 1.0  # Hodges' sum rounded above 1; scipy took kstwo instead
    assert ks.ks_2samp_columns(reference[:, 2:3], current[:, 2:3]).pvalue[0] == pytest.approx(pvalue[0], abs=1e-14)


@pytest.mark.parametrize("method", ["exact", "asymp"])
def test_forced_method_matches_scipy_forced_method(method: str) -> None:
    reference, current = windows(400, 300, 12, seed=3)
    result = ks.ks_2samp_columns(reference, current, method=method)
    _, pvalue = scipy_ks_loop(reference, current, method=method)
    assert result.method == method
    np.testing.assert_allclose(result.pvalue, pvalue, rtol=0, atol=1e-10)


def test_equal_sizes_exact_is_bitwise_scipy() -> None:
    reference, current = windows(500, 500, 30, seed=5)
    _, pvalue = scipy_ks_loop(reference, current)
    assert np.array_equal(ks.ks_2samp_columns(reference, current).pvalue, pvalue)


def test_deep_tail_is_flagged_upper_bound_within_tolerance() -> None:
    reference, current = windows(20_000, 20_000, 4, seed=1, shift=0.0, rounded=0)
    current[:, 0] += 0.3  # p ~ 1e-190: reported as Massart's bound
    result = ks.ks_2samp_columns(reference, current)
    _, pvalue = scipy_ks_loop(reference, current)
    assert result.bounded.tolist() == [True, False, False, False]
    assert pvalue[0] <= result.pvalue[0] <= ks.TAIL
    np.testing.assert_allclose(result.pvalue, pvalue, rtol=0, atol=1e-10)


def test_exact_unequal_sizes_keep_relative_precision_and_bound_the_deep_tail() -> None:
    """30 null columns, 10 shifted (p ~ 1e-35), 3 far apart (p below 1e-40): the last are
    reported as the p-value of a smaller statistic, a true upper bound."""
    rng = np.random.default_rng(2)
    reference, current = rng.normal(size=(2000, 43)), rng.normal(size=(1500, 43))
    current[:, 30:40] += 0.5
    current[:, 40:] += 3.0
    result = ks.ks_2samp_columns(reference, current)
    _, pvalue = scipy_ks_loop(reference, current)
    assert result.method == "exact"
    assert result.bounded.tolist() == [False] * 40 + [True] * 3
    assert np.all(pvalue[40:] <= result.pvalue[40:]) and np.all(result.pvalue[40:] <= ks.TAIL)
    np.testing.assert_allclose(result.pvalue[:40], pvalue[:40], rtol=1e-9, atol=0)


def test_sorted_reference_is_reused_and_cached() -> None:
    reference, current = windows(300, 200, 10, seed=4)
    fitted = ks.SortedReference(reference)
    first = ks.ks_2samp_columns(fitted, current)
    assert fitted.pvalue_cache[(200, "exact")]
    second = ks.ks_2samp_columns(fitted, current)
    assert np.array_equal(first.pvalue, second.pvalue)
    part = fitted.subset(np.array([1, 3]))
    np.testing.assert_array_equal(ks.ks_2samp_columns(part, current[:, [1, 3]]).pvalue, first.pvalue[[1, 3]])


def test_blocks_smaller_than_columns_give_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    reference, current = windows(300, 250, 9, seed=6)
    whole = ks.ks_2samp_columns(reference, current)
    monkeypatch.setattr(ks, "_BLOCK_BYTES", 8 * 550 * 2)  # two columns per block
    assert np.array_equal(ks.ks_2samp_columns(reference, current).pvalue, whole.pvalue)


def test_identical_windows_give_d_zero_p_one() -> None:
    data = np.random.default_rng(0).normal(size=(50, 3))
    result = ks.ks_2samp_columns(data, data.copy())
    assert np.all(result.statistic == 0) and np.all(result.pvalue == 1)


@pytest.mark.parametrize(("reference", "current", "message"), [
    (np.ones((0, 2)), np.ones((5, 2)), "reference window is empty"),
    (np.ones((5, 2)), np.ones((0, 2)), "current window is empty"),
    (np.ones((5, 2)), np.ones((5, 3)), "shape"),
    (np.array([[1.0], [np.nan]]), np.ones((5, 1)), "NaN or inf"),
    (np.ones((5, 1)), np.array([[1.0], [np.inf]]), "NaN or inf"),
    (np.ones(5), np.ones(5), "2-D"),
])
def test_bad_input_is_a_clear_error(reference: np.ndarray, current: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ks.ks_2samp_columns(reference, current)


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        ks.ks_2samp_columns(np.ones((5, 1)), np.ones((5, 1)), method="fast")


# ---- the conformance check and its planted bugs -------------------------------------------

def test_check_passes_for_the_reference_implementation() -> None:
    reference, current = windows(300, 200, 8)
    assert all(c.passed for c in ks_matches_scipy(ks.ks_2samp_columns, reference, current))


def always_asymptotic(reference: np.ndarray, current: np.ndarray) -> ks.KSResult:
    """Planted bug: the asymptotic p-value where scipy computes the exact one."""
    return ks.ks_2samp_columns(reference, current, method="asymp")


def ties_counted_at_first_occurrence(reference: np.ndarray, current: np.ndarray) -> ks.KSResult:
    """Planted bug: the ECDF difference evaluated inside runs of tied values."""
    sorted_ref = ks.SortedReference(reference)
    keys = np.empty(reference.shape[1], dtype=np.int64)
    for columns, block in ks.merged_blocks(sorted_ref, current):
        keys[columns] = np.abs(block.key).max(axis=1)
    return ks.pvalues_from_keys(keys, sorted_ref, len(current))


def pvalue_scaled_slightly(reference: np.ndarray, current: np.ndarray) -> ks.KSResult:
    """Planted bug: p-values 0.01% too large (a wrong constant in a formula)."""
    result = ks.ks_2samp_columns(reference, current)
    return ks.KSResult(result.statistic, np.minimum(result.pvalue * 1.0001, 1.0), result.method, result.bounded)


@pytest.mark.parametrize(("broken", "failing"), [
    pytest.param(always_asymptotic, {"drift.ks_method_as_scipy", "drift.ks_pvalue_equals_scipy"},
                 marks=pytest.mark.breaks("drift.ks_method_as_scipy")),
    pytest.param(ties_counted_at_first_occurrence, {"drift.ks_statistic_equals_scipy", "drift.ks_pvalue_equals_scipy"},
                 marks=pytest.mark.breaks("drift.ks_statistic_equals_scipy")),
    (pvalue_scaled_slightly, {"drift.ks_pvalue_equals_scipy"}),
])
@pytest.mark.breaks("drift.ks_pvalue_equals_scipy")
def test_check_catches_planted_bug(broken, failing: set[str]) -> None:  # type: ignore[no-untyped-def]
    reference, current = windows(300, 200, 8)
    found = {c.name: c.passed for c in ks_matches_scipy(broken, reference, current)}
    assert {name for name, passed in found.items() if not passed} == failing


def test_scipy_loop_is_scipy() -> None:
    reference, current = windows(40, 30, 2)
    statistic, pvalue = scipy_ks_loop(reference, current)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        direct = stats.ks_2samp(reference[:, 1], current[:, 1])
    assert (statistic[1], pvalue[1]) == (direct.statistic, direct.pvalue)
