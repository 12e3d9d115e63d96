"""The validation harness and its conformance checks: false alarms with and without
correction, detection under known shifts, each check fed a planted bug."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("sklearn")

from reference.monitoring import conformance, correction, validation  # noqa: E402

ALPHA = 0.05


def test_clopper_pearson_interval() -> None:
    from scipy.stats import binomtest

    for hits, trials in [(0, 50), (7, 200), (200, 200), (13, 40)]:
        expected = binomtest(hits, trials).proportion_ci(0.95, method="exact")
        assert validation.Rate(hits, trials).interval == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_null_pool_has_independent_columns_of_four_shapes() -> None:
    pool = validation.null_pool(np.random.default_rng(0), 4000, 8, "numeric")
    assert pool.shape == (4000, 8)
    assert (pool[:, 1] > 0).all() and (pool[:, 2] > 0).all()  # lognormal, exponential
    assert abs(np.corrcoef(pool.T)[np.triu_indices(8, 1)]).max() < 0.1
    codes = validation.null_pool(np.random.default_rng(0), 4000, 3, "categorical")
    assert set(np.unique(codes)) == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_corrected_false_alarms_within_alpha_and_naive_inflation_reproduced(kind: str) -> None:
    null = validation.null_false_alarms(50, 200, 60, ALPHA, seed=1, kind=kind)
    assert all(c.passed for c in conformance.corrected_false_alarms_within_alpha(null))
    inflation = conformance.uncorrected_inflation_reproduced(null)
    assert len(inflation) == 2 and all(c.passed for c in inflation)
    assert null.any_alarm["none"].value > 0.6  # 1 - 0.95**50 = 0.92 for exact-size tests


def no_op_correction(p: np.ndarray, method: str) -> np.ndarray:
    """Planted bug: every correction method returns the raw p-values."""
    return correction.adjust(p, "none")


def corrects_even_when_told_not_to(p: np.ndarray, method: str) -> np.ndarray:
    """Planted bug: the 'uncorrected' detector quietly applies Bonferroni, hiding the inflation."""
    return correction.adjust(p, "bonferroni" if method == "none" else method)


@pytest.mark.breaks("drift.<correction>_within_alpha")
def test_fpr_check_catches_missing_correction() -> None:
    null = validation.null_false_alarms(20, 200, 60, ALPHA, seed=1, adjust=no_op_correction)
    assert not any(c.passed for c in conformance.corrected_false_alarms_within_alpha(null))


@pytest.mark.breaks("drift.uncorrected_inflated_above_alpha", "drift.uncorrected_matches_independence")
def test_inflation_check_catches_a_detector_that_hides_it() -> None:
    null = validation.null_false_alarms(20, 200, 60, ALPHA, seed=1, adjust=corrects_even_when_told_not_to)
    assert not all(c.passed for c in conformance.uncorrected_inflation_reproduced(null))


@pytest.mark.breaks("drift.<correction>_within_alpha")
def test_fpr_check_catches_an_anticonservative_test() -> None:
    def halved(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Planted bug: p-values half what they should be (a one-sided/two-sided mix-up)."""
        return validation.ks_pvalues(reference, current) / 2

    null = validation.null_false_alarms(1, 1000, 60, ALPHA, seed=2, pvalues=halved)
    assert not all(c.passed for c in conformance.corrected_false_alarms_within_alpha(null))


@pytest.mark.parametrize(("dataset", "shift", "window"), [("breast_cancer", 0.5, 200), ("wine", 0.5, 200),
                                                          ("mean", 0.5, 200), ("variance", 1.0, 200),
                                                          ("shape", 2.0, 500)])
def test_known_shift_is_detected_and_no_shift_stays_within_alpha(dataset: str, shift: float, window: int) -> None:
    points = validation.power(dataset, [0.0, shift], [window], 100, ALPHA, seed=3)
    assert conformance.detects_known_shift(points, shift, window).passed
    assert conformance.null_calibrated(points, ALPHA).passed
    assert points[1].detected.value > points[0].detected.value


def test_power_grows_with_window_and_shift() -> None:
    points = {(p.shift, p.window): p.detected.value
              for p in validation.power("mean", [0.1, 0.3, 0.6], [50, 400], 100, ALPHA, seed=4)}
    assert points[(0.6, 400)] >= points[(0.3, 400)] >= points[(0.1, 400)]
    assert points[(0.3, 400)] > points[(0.3, 50)]


@pytest.mark.breaks("drift.detects_<dataset>_shift")
def test_detection_check_catches_an_insensitive_test() -> None:
    def blind(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Planted bug: compares the reference with itself."""
        return validation.ks_pvalues(reference, reference.copy())

    points = validation.power("breast_cancer", [0.0, 1.0], [100], 50, ALPHA, seed=5, pvalues=blind)
    assert not conformance.detects_known_shift(points, 1.0, 100).passed


@pytest.mark.breaks("drift.<dataset>_no_shift_within_alpha")
def test_null_calibration_check_catches_an_anticonservative_test() -> None:
    def inflated(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
        return np.minimum(validation.ks_pvalues(reference, current) * 0.1, 1)

    points = validation.power("mean", [0.0], [100], 300, ALPHA, seed=6, pvalues=inflated)
    assert not conformance.null_calibrated(points, ALPHA).passed


def test_synthetic_shifts_keep_mean_and_variance_where_promised() -> None:
    rng = np.random.default_rng(7)
    shape = validation.synthetic_shift("shape", 1.0, rng, (200_000,))
    assert abs(shape.mean()) < 0.02 and abs(shape.std() - 1) < 0.02
    assert abs(((shape - shape.mean()) ** 3).mean() - 1.0) < 0.1
    assert abs(validation.synthetic_shift("variance", 0.5, rng, (200_000,)).std() - 1.5) < 0.02
    with pytest.raises(ValueError, match="synthetic shift must be"):
        validation.synthetic_shift("tilt", 1.0, rng, (3,))


def test_real_sub_populations() -> None:
    data, sub = validation.real_dataset("breast_cancer")
    assert data.shape == (569, 30) and sub.sum() == 212
    data, sub = validation.real_dataset("wine")
    assert data.shape == (178, 13) and sub.sum() == 59
    with pytest.raises(ValueError, match="dataset must be one of"):
        validation.real_dataset("iris")


def test_mmd_sees_correlation_shift_per_feature_tests_do_not() -> None:
    null, strong = validation.correlation_shift_power([0.0, 0.9], 300, 12, permutations=100, seed=8)
    assert strong.mmd.value >= 0.8 and strong.per_feature.value <= 0.25
    assert null.mmd.value <= 0.25


def test_mmd_checks_pass_on_the_reference_test() -> None:
    results = validation.correlation_shift_power([0.0, 0.9], 400, 20, permutations=100, seed=8)
    found = conformance.mmd_calibrated_and_powerful(results, 0.05)
    assert all(c.passed for c in found), found


def marginal_only_mmd(reference, current, **kwargs):  # type: ignore[no-untyped-def]
    """Planted bug: the "MMD" of each feature's marginal (a kernel on one column at a time),
    which a correlation between features never moves."""
    from reference.monitoring.mmd import mmd_permutation_test

    return min((mmd_permutation_test(reference[:, [j]], current[:, [j]], **kwargs) for j in range(reference.shape[1])),
               key=lambda result: result.pvalue)


def p_below_alpha_half_the_time(reference, current, **kwargs):  # type: ignore[no-untyped-def]
    """Planted bug: a p-value that is not one (the permutation distribution mis-indexed)."""
    from reference.monitoring.mmd import mmd_permutation_test

    result = mmd_permutation_test(reference, current, **kwargs)
    return dataclasses.replace(result, pvalue=result.pvalue / 10)


@pytest.mark.breaks("drift.mmd_detects_correlation_shift")
def test_mmd_power_check_catches_a_test_blind_to_correlation() -> None:
    results = validation.correlation_shift_power([0.0, 0.9], 400, 8, permutations=50, seed=8,
                                                 mmd_test=marginal_only_mmd)
    failed = {c.name for c in conformance.mmd_calibrated_and_powerful(results, 0.05) if not c.passed}
    assert "drift.mmd_detects_correlation_shift" in failed


@pytest.mark.breaks("drift.mmd_no_shift_within_alpha")
def test_mmd_calibration_check_catches_an_anticonservative_pvalue() -> None:
    results = validation.correlation_shift_power([0.0, 0.9], 200, 20, permutations=50, seed=8,
                                                 mmd_test=p_below_alpha_half_the_time)
    failed = {c.name for c in conformance.mmd_calibrated_and_powerful(results, 0.05) if not c.passed}
    assert "drift.mmd_no_shift_within_alpha" in failed
