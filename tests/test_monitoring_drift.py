"""The drift detector: categorical tests, corrections and effect sizes against scipy, the
multivariate test, explicit statuses for bad input, and sliding windows."""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from scipy import stats  # noqa: E402

from reference.monitoring import correction, effect_sizes  # noqa: E402
from reference.monitoring.chi2 import chi2_homogeneity  # noqa: E402
from reference.monitoring.conformance import bh_matches_scipy, chi2_matches_scipy  # noqa: E402
from reference.monitoring.drift import DriftDetector, DriftInputError  # noqa: E402
from reference.monitoring.ks import SortedReference, merged_blocks  # noqa: E402
from reference.monitoring.mmd import mmd_permutation_test  # noqa: E402
from reference.monitoring.streaming import SlidingWindows  # noqa: E402


def frames(rows: int = 400, shift: float = 0.0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def frame(n: int, delta: float) -> pd.DataFrame:
        return pd.DataFrame({
            "age": rng.normal(40 + 10 * delta, 10, n),
            "income": rng.lognormal(10, 1, n),
            "count": rng.poisson(3, n),
            "city": rng.choice(["a", "b", "c"], n, p=[0.5 - 0.3 * delta, 0.3, 0.2 + 0.3 * delta]),
            "member": rng.random(n) < 0.3,
        })

    return frame(rows, 0.0), frame(rows, shift)


# ---- chi-square, corrections, effect sizes against scipy ----------------------------------

def count_tables(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tables with 2 to 6 categories, padded with zeros, one with a category new in current."""
    rng = np.random.default_rng(seed)
    ref, cur = np.zeros((12, 6)), np.zeros((12, 6))
    for row in range(12):
        width = 2 + row % 5
        ref[row, :width] = rng.integers(1, 60, width)
        cur[row, :width] = rng.integers(1, 60, width)
    ref[0, 2], cur[0, 2] = 0, 9
    return ref, cur


def test_chi2_equals_scipy_chi2_contingency() -> None:
    assert chi2_matches_scipy(chi2_homogeneity, *count_tables()).passed


@pytest.mark.breaks("drift.chi2_pvalue_equals_scipy")
def test_chi2_check_catches_missing_yates_correction() -> None:
    def no_yates(ref: np.ndarray, cur: np.ndarray):  # type: ignore[no-untyped-def]
        return chi2_homogeneity(ref, cur, correction=False)

    assert not chi2_matches_scipy(no_yates, *count_tables()).passed


def test_chi2_single_category_is_p_one() -> None:
    result = chi2_homogeneity(np.array([[5.0, 0.0]]), np.array([[7.0, 0.0]]))
    assert result.dof.tolist() == [0] and result.pvalue.tolist() == [1.0]


def test_chi2_rejects_empty_rows() -> None:
    with pytest.raises(ValueError, match="at least one count"):
        chi2_homogeneity(np.array([[0.0, 0.0]]), np.array([[1.0, 2.0]]))


def test_bh_equals_scipy_false_discovery_control() -> None:
    p = np.random.default_rng(0).random(200) ** 3
    assert bh_matches_scipy(correction.adjust, p).passed


@pytest.mark.breaks("drift.bh_equals_scipy")
def test_bh_check_catches_step_down_instead_of_step_up() -> None:
    def without_monotone_step(p: np.ndarray, method: str) -> np.ndarray:
        ranks = np.argsort(np.argsort(p)) + 1
        return np.minimum(p * p.size / ranks, 1.0)

    assert not bh_matches_scipy(without_monotone_step, np.random.default_rng(0).random(200) ** 3).passed


def test_adjust_rows_are_separate_families_and_nan_is_left_out() -> None:
    p = np.array([[0.01, 0.02, np.nan], [0.01, 0.5, 0.9]])
    bonferroni = correction.adjust(p, "bonferroni")
    np.testing.assert_allclose(bonferroni[0, :2], [0.02, 0.04])
    np.testing.assert_allclose(bonferroni[1], [0.03, 1.0, 1.0])
    assert np.isnan(bonferroni[0, 2]) and np.isnan(correction.adjust(p, "bh")[0, 2])
    np.testing.assert_allclose(correction.adjust(p, "bh")[0, :2], stats.false_discovery_control([0.01, 0.02]))
    assert correction.reject(p, 0.05, "bh").tolist() == [[True, True, False], [True, False, False]]
    assert correction.reject(p, 0.05, "none").tolist() == [[True, True, False], [True, False, False]]
    assert correction.reject(p, 0.019, "bonferroni").tolist() == [[False, False, False], [False, False, False]]


@pytest.mark.parametrize(("kwargs", "message"), [({"method": "holm"}, "correction must be"),
                                                 ({"pvalues": np.array([1.5])}, r"\[0, 1\]")])
def test_adjust_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        correction.adjust(**{"pvalues": np.array([0.1]), "method": "bh", **kwargs})


def test_wasserstein_equals_scipy() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=(300, 5)), rng.exponential(size=(200, 5))
    ref[:, 0], cur[:, 0] = np.round(ref[:, 0]), np.round(cur[:, 0])  # ties
    (columns, block), = merged_blocks(SortedReference(ref), cur)
    ours = effect_sizes.wasserstein_merged(block.values, block.key, 300, 200)
    expected = [stats.wasserstein_distance(ref[:, j], cur[:, j]) for j in range(5)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_psi_equals_a_per_column_histogram() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=(1000, 4)), rng.normal(0.3, 1.2, size=(700, 4))
    ref[:, 3] = np.round(ref[:, 3])  # repeated quantile edges
    sorted_ref, sorted_cur = np.sort(ref.T, axis=1), np.sort(cur.T, axis=1)
    ours = effect_sizes.psi_numeric(sorted_ref, sorted_cur, bins=10)
    for j in range(4):
        edges = sorted_ref[j, (np.arange(1, 10) * 1000) // 10]
        p = np.bincount(np.searchsorted(edges, ref[:, j], side="left"), minlength=10) / 1000
        q = np.bincount(np.searchsorted(edges, cur[:, j], side="left"), minlength=10) / 700
        p, q = np.maximum(p, effect_sizes.PSI_FLOOR), np.maximum(q, effect_sizes.PSI_FLOOR)
        assert ours[j] == pytest.approx(((q - p) * np.log(q / p)).sum(), rel=1e-12)


def test_row_searchsorted_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    rows = np.sort(np.round(rng.normal(size=(6, 101)), 1), axis=1)
    queries = np.round(rng.normal(size=(6, 9)), 1)
    expected = np.array([np.searchsorted(r, q, side="right") for r, q in zip(rows, queries)])
    assert np.array_equal(effect_sizes.row_searchsorted(rows, queries), expected)


# ---- the detector ---------------------------------------------------------------------------

def test_no_drift_on_same_distribution_and_drift_on_shift() -> None:
    reference, same = frames(shift=0.0)
    assert DriftDetector(reference).test(same).verdict == "no_drift"
    reference, shifted = frames(shift=1.0)
    report = DriftDetector(reference).test(shifted)
    assert report.verdict == "drift"
    assert {"age", "city"} <= set(report.drifted)
    table = report.to_frame()
    assert table.loc["age", "test"] == "ks" and table.loc["city", "test"] == "chi2"
    assert table.loc["member", "kind"] == "categorical" and table.loc["count", "kind"] == "numeric"
    assert table.loc["age", "psi"] > 0.25 and table.loc["age", "wasserstein"] > 5


def test_detector_pvalues_equal_scipy_and_bh_is_applied() -> None:
    reference, current = frames(shift=0.3, seed=4)
    report = DriftDetector(reference, categorical=["count"]).test(current)
    table = report.to_frame()
    assert table.loc["count", "test"] == "chi2"
    assert table.loc["age", "p_value"] == pytest.approx(stats.ks_2samp(reference["age"], current["age"]).pvalue,
                                                        abs=1e-10)
    counts = pd.crosstab(np.r_[np.zeros(400), np.ones(400)], np.r_[reference["city"], current["city"]])
    assert table.loc["city", "p_value"] == pytest.approx(stats.chi2_contingency(counts).pvalue, abs=1e-10)
    np.testing.assert_allclose(table["p_adjusted"], stats.false_discovery_control(table["p_value"]), atol=1e-12)


def test_bonferroni_and_none_corrections() -> None:
    reference, current = frames(shift=0.3, seed=4)
    bonferroni = DriftDetector(reference, correction="bonferroni").test(current).to_frame()
    np.testing.assert_allclose(bonferroni["p_adjusted"], np.minimum(bonferroni["p_value"] * 5, 1))
    plain = DriftDetector(reference, correction="none").test(current).to_frame()
    assert (plain["p_adjusted"] == plain["p_value"]).all()


def test_nan_and_inf_give_an_explicit_status_and_incomplete_verdict() -> None:
    reference, current = frames()
    current.loc[5, "age"] = np.nan
    current.loc[7, "income"] = np.inf
    current.loc[9, "city"] = None
    report = DriftDetector(reference).test(current)
    table = report.to_frame()
    assert set(report.untested) == {"age", "income", "city"}
    assert table.loc["age", "status"] == "invalid_values" and "1 NaN" in table.loc["age", "detail"]
    assert "1 inf" in table.loc["income", "detail"] and "missing values" in table.loc["city", "detail"]
    assert table.loc["age", "drift"] is None and np.isnan(table.loc["age", "p_value"])
    assert report.verdict == "incomplete"


def test_nan_in_reference_is_reported_per_feature() -> None:
    reference, current = frames()
    reference.loc[0, "age"] = np.nan
    table = DriftDetector(reference).test(current).to_frame()
    assert table.loc["age", "status"] == "invalid_values" and "reference has 1 NaN" in table.loc["age", "detail"]


def test_constant_column_is_flagged_and_still_tested() -> None:
    reference, current = frames()
    reference["flag"], current["flag"] = 1.0, 1.0
    current.loc[:99, "flag"] = 2.0
    table = DriftDetector(reference).test(current).to_frame()
    assert table.loc["flag", "status"] == "constant"
    assert bool(table.loc["flag", "drift"]) and table.loc["flag", "statistic"] == pytest.approx(0.25)


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="age"), r"missing \['age'\]"),
    (lambda f: f.assign(extra=1.0), r"unexpected \['extra'\]"),
    (lambda f: f.assign(age=f["age"].astype(str)), "'age' has dtype float64"),
    (lambda f: f.assign(city=np.arange(len(f))), "'city' has dtype .* but int64"),
    (lambda f: f.iloc[:0], "current window is empty"),
    (lambda f: f.iloc[:5], "has 5 rows; at least 20"),
])
def test_bad_current_window_is_a_clear_error(change, message: str) -> None:  # type: ignore[no-untyped-def]
    reference, current = frames()
    with pytest.raises(DriftInputError, match=message):
        DriftDetector(reference).test(change(current))


def test_columns_may_come_in_another_order() -> None:
    reference, current = frames(seed=2)
    detector = DriftDetector(reference)
    assert detector.test(current[current.columns[::-1]]).to_frame().equals(detector.test(current).to_frame())


def test_bad_construction_is_a_clear_error() -> None:
    reference, _ = frames()
    with pytest.raises(DriftInputError, match="reference window has 3 rows"):
        DriftDetector(reference.iloc[:3])
    with pytest.raises(DriftInputError, match="not in the reference"):
        DriftDetector(reference, categorical=["nope"])
    with pytest.raises(ValueError, match="correction must be"):
        DriftDetector(reference, correction="holm")
    with pytest.raises(DriftInputError, match="plain array must be numeric"):
        DriftDetector(np.array([["a", "b"]] * 30))


def test_integer_and_tuple_column_labels_are_named_by_their_str() -> None:
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    current[:, 1] += 1
    detector = DriftDetector(pd.DataFrame(reference))  # integer labels 0, 1, 2
    assert detector.test(pd.DataFrame(current)).drifted == ["1"]
    assert detector.test(current).drifted == ["1"]  # a plain array takes the reference's names
    assert DriftDetector(pd.DataFrame({0: rng.integers(0, 3, 300), 1: reference[:, 0]}), categorical=[0]).schema.kinds \
        == {"0": "categorical", "1": "numeric"}
    tuples = pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)])
    assert DriftDetector(pd.DataFrame(reference, columns=tuples)).test(
        pd.DataFrame(current, columns=tuples)).drifted == ["('a', 2)"]


@pytest.mark.parametrize(("labels", "which", "clash"), [
    (["a", "a", "b"], "reference", "'a'"), ([0, "0", "b"], "reference", "'0'"), (["a", "b", "b"], "current", "'b'"),
])
def test_duplicate_column_names_are_refused_by_name(labels: list, which: str, clash: str) -> None:
    rng = np.random.default_rng(0)
    good = pd.DataFrame(rng.normal(size=(50, 3)), columns=["a", "b", "c"])
    bad = pd.DataFrame(rng.normal(size=(50, 3)), columns=labels)
    with pytest.raises(DriftInputError, match=f"unique in the {which} window.*{clash}"):
        DriftDetector(bad if which == "reference" else good).test(bad)


def timestamps(year: int, rows: int = 300, seed: int = 0, tz: str | None = None) -> pd.Series:
    offsets = pd.to_timedelta(np.random.default_rng(seed).uniform(0, 365, rows), unit="D")
    return pd.Series(pd.Timestamp(f"{year}-01-01", tz=tz) + offsets)


def test_dates_compare_as_epoch_seconds_so_disjoint_years_are_drift() -> None:
    reference = pd.DataFrame({"served": timestamps(2020), "wait": pd.to_timedelta(np.arange(300) % 60, unit="min")})
    same = pd.DataFrame({"served": timestamps(2020, seed=1), "wait": reference["wait"].sample(frac=1, random_state=0)})
    later = reference.assign(served=timestamps(2023))  # the same offsets, 1096 days on
    detector = DriftDetector(reference)
    assert detector.schema.kinds == {"served": "numeric", "wait": "numeric"}
    assert detector.test(same).verdict == "no_drift"
    report = detector.test(later)
    assert report.drifted == ["served"] and report.to_frame().loc["wait", "statistic"] == 0.0
    served = report.to_frame().loc["served"]
    assert served["statistic"] == 1.0 and served["wasserstein"] == pytest.approx(1096 * 86400, rel=1e-9)


def test_aware_dates_compare_as_instants_and_never_with_naive_ones() -> None:
    paris = timestamps(2021, tz="Europe/Paris")
    detector = DriftDetector(pd.DataFrame({"t": paris}))
    same_instants = detector.test(pd.DataFrame({"t": paris.dt.tz_convert("Asia/Tokyo")})).to_frame().loc["t"]
    assert same_instants["statistic"] == 0.0 and same_instants["wasserstein"] == 0.0
    with pytest.raises(DriftInputError, match=r"'t' has dtype datetime64\[ns, Europe/Paris\] \(datetime_tz\)"):
        detector.test(pd.DataFrame({"t": paris.dt.tz_localize(None)}))


def test_complex_columns_are_refused_not_silently_made_real() -> None:
    values = np.random.default_rng(0).normal(size=50) * (1 + 1j)
    with pytest.raises(DriftInputError, match="'z' is complex"):
        DriftDetector(pd.DataFrame({"z": values}))
    with pytest.raises(DriftInputError, match="'z' is complex"):
        DriftDetector(pd.DataFrame({"z": values.real})).test(pd.DataFrame({"z": values}))


def test_missing_dates_are_invalid_values_not_a_verdict() -> None:
    reference = pd.DataFrame({"t": timestamps(2020)})
    current = reference.assign(t=reference["t"].where(np.arange(300) % 10 > 0))  # every 10th is NaT
    report = DriftDetector(reference).test(current)
    assert report.untested == ["t"] and report.verdict == "incomplete"
    assert "current has 30 NaN" in report.features[0].detail


def test_arrays_work_like_frames() -> None:
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    current[:, 2] += 1
    report = DriftDetector(reference).test(current)
    assert report.drifted == ["x2"] and report.current_rows == 200


def test_multivariate_mmd_sees_a_correlation_the_marginals_hide() -> None:
    rng = np.random.default_rng(1)
    reference = pd.DataFrame(rng.normal(size=(400, 3)), columns=list("abc"))
    mixed = rng.multivariate_normal([0, 0, 0], [[1, 0.9, 0], [0.9, 1, 0], [0, 0, 1]], size=400)
    report = DriftDetector(reference, multivariate=True).test(pd.DataFrame(mixed, columns=list("abc")))
    assert report.drifted == [] and report.multivariate is not None
    assert report.multivariate.pvalue <= 0.05 and report.verdict == "drift"
    unchanged = pd.DataFrame(rng.normal(size=(400, 3)), columns=list("abc"))
    same = DriftDetector(reference, multivariate=True).test(unchanged)
    assert same.multivariate is not None and same.multivariate.pvalue > 0.05


def test_mmd_pvalue_is_valid_and_inputs_checked() -> None:
    rng = np.random.default_rng(1)
    result = mmd_permutation_test(rng.normal(size=(50, 2)), rng.normal(size=(60, 2)), permutations=99)
    assert 1 / 100 <= result.pvalue <= 1 and result.rows_used == (50, 60)
    with pytest.raises(ValueError, match="equal features"):
        mmd_permutation_test(np.ones((5, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        mmd_permutation_test(np.full((5, 1), np.nan), np.ones((5, 1)))


# ---- streaming -------------------------------------------------------------------------------

def test_sliding_windows_over_batches_of_any_size() -> None:
    reference, stream = frames(rows=600, shift=0.0, seed=5)
    _, drifted = frames(rows=300, shift=1.5, seed=6)
    monitor = SlidingWindows(DriftDetector(reference), window=200, step=100)
    stream = pd.concat([stream.iloc[:300], drifted], ignore_index=True)
    reports = [r for start in range(0, 600, 70) for r in monitor.update(stream.iloc[start:start + 70])]
    assert [(r.start, r.stop) for r in reports] == [(0, 200), (100, 300), (200, 400), (300, 500), (400, 600)]
    assert [r.report.verdict for r in reports] == ["no_drift", "no_drift", "drift", "drift", "drift"]
    assert len(monitor._buffer) < 300  # only rows a future window can still use are kept


def test_sliding_windows_reject_mixed_batch_types_and_bad_sizes() -> None:
    reference = np.random.default_rng(0).normal(size=(100, 2))
    monitor = SlidingWindows(DriftDetector(reference), window=50)
    monitor.update(np.zeros((10, 2)))
    with pytest.raises(TypeError, match="batches must all be ndarray"):
        monitor.update(pd.DataFrame(np.zeros((10, 2))))
    with pytest.raises(ValueError, match="below the detector's min_rows"):
        SlidingWindows(DriftDetector(reference), window=5)
    with pytest.raises(ValueError, match="step must be"):
        SlidingWindows(DriftDetector(reference), window=50, step=60)
