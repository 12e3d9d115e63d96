"""Conformance checks for monitoring. Each takes the implementation under test as an
argument, so a test can hand it a deliberately broken one and watch the check fail."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from reference.monitoring import validation
from reference.monitoring.simulation import PREDICTION, Monitor, Stream
from suite import checks
from suite.schema import Check

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "drift.ks_method_as_scipy",
    "drift.ks_statistic_equals_scipy",
    "drift.ks_pvalue_equals_scipy",
    "drift.detector_ks_equals_columns_ks",
    "drift.chi2_pvalue_equals_scipy",
    "drift.bh_equals_scipy",
    "drift.<correction>_within_alpha",
    "drift.uncorrected_matches_independence",
    "drift.uncorrected_inflated_above_alpha",
    "drift.detects_<dataset>_shift",
    "drift.<dataset>_no_shift_within_alpha",
    "drift.mmd_no_shift_within_alpha",
    "drift.mmd_detects_correlation_shift",
    "performance.metrics_equal_sklearn",
    "performance.latency_percentiles_equal_numpy",
    "performance.unlabeled_counts_exact",
    "performance.running_totals_equal_window",
    "prometheus.promtool_check_metrics",
    "prometheus.client_parser_parses",
    "prometheus.<counter>_equals_events",
    "logs.every_line_is_a_json_object",
    "logs.one_event_per_prediction",
    "logs.low_confidence_warnings",
)

PVALUE_TOLERANCE = 1e-10
STATISTIC_TOLERANCE = 1e-12
METRIC_TOLERANCE = 1e-12
MIN_POWER = 0.8

KSColumns = Callable[[np.ndarray, np.ndarray], Any]  # -> object with .statistic, .pvalue, .method


def scipy_ks_loop(reference: np.ndarray, current: np.ndarray, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The baseline: scipy.stats.ks_2samp once per column."""
    results = [scipy_stats.ks_2samp(reference[:, j], current[:, j], method=method) for j in range(reference.shape[1])]
    return np.array([r.statistic for r in results]), np.array([r.pvalue for r in results])


def scipy_ks_method(rows_reference: int, rows_current: int) -> str:
    """The method scipy's 'auto' picks for these sizes."""
    return "exact" if max(rows_reference, rows_current) <= 10_000 else "asymp"


def ks_matches_scipy(candidate: KSColumns, reference: np.ndarray, current: np.ndarray,
                     scipy_result: tuple[np.ndarray, np.ndarray] | None = None) -> list[Check]:
    """Statistics and p-values of a vectorised KS equal scipy's per-column results, with the
    same method (exact/asymp) scipy chose."""
    result = candidate(reference, current)
    statistic, pvalue = scipy_result if scipy_result is not None else scipy_ks_loop(reference, current)
    expected_method = scipy_ks_method(len(reference), len(current))
    where = f"{reference.shape[1]} columns, {len(reference)} vs {len(current)} rows"
    return [
        checks.holds("drift.ks_method_as_scipy", result.method == expected_method, "scipy ks_2samp method='auto'",
                     f"used {result.method}, scipy uses {expected_method}; {where}"),
        checks.at_most("drift.ks_statistic_equals_scipy", float(np.max(np.abs(result.statistic - statistic))),
                       STATISTIC_TOLERANCE, "scipy.stats.ks_2samp per column", where),
        checks.at_most("drift.ks_pvalue_equals_scipy", float(np.max(np.abs(result.pvalue - pvalue))),
                       PVALUE_TOLERANCE, "scipy.stats.ks_2samp per column", f"max |p - p_scipy|; {where}"),
    ]


def chi2_matches_scipy(candidate: Callable[[np.ndarray, np.ndarray], Any], reference_counts: np.ndarray,
                       current_counts: np.ndarray) -> Check:
    result = candidate(reference_counts, current_counts)
    expected = []
    for ref, cur in zip(reference_counts, current_counts):
        table = np.array([ref, cur])
        expected.append(scipy_stats.chi2_contingency(table[:, table.sum(axis=0) > 0]).pvalue)
    gap = float(np.max(np.abs(result.pvalue - np.array(expected))))
    return checks.at_most("drift.chi2_pvalue_equals_scipy", gap, PVALUE_TOLERANCE, "scipy.stats.chi2_contingency",
                          f"{len(expected)} features")


def bh_matches_scipy(adjust: Callable[[np.ndarray, str], np.ndarray], pvalues: np.ndarray) -> Check:
    gap = float(np.max(np.abs(adjust(pvalues, "bh") - scipy_stats.false_discovery_control(pvalues, method="bh"))))
    return checks.at_most("drift.bh_equals_scipy", gap, PVALUE_TOLERANCE, "scipy.stats.false_discovery_control",
                          f"{pvalues.size} p-values")


def corrected_false_alarms_within_alpha(null: validation.NullResult) -> list[Check]:
    """With correction, the rate of windows with any alarm (FWER for Bonferroni; under the
    global null also BH's FDR) is not significantly above alpha: its CI reaches down to alpha."""
    found = []
    for method, label in (("bonferroni", "fwer_bonferroni"), ("bh", "fdr_bh")):
        rate = null.any_alarm[method]
        low, high = rate.interval
        found.append(checks.at_most(f"drift.{label}_within_alpha", low, null.alpha, "alpha",
                                    f"observed {rate.value:.4f} [{low:.4f}, {high:.4f}] over {rate.trials} null "
                                    f"windows, {null.features} features, {null.rows} rows each"))
    return found


def uncorrected_inflation_reproduced(null: validation.NullResult) -> list[Check]:
    """Without correction the false-alarm rate matches 1 - (1 - size)^F (size = the single
    test's measured rejection rate), and from 10 features on it is clearly above alpha."""
    rate = null.any_alarm["none"]
    low, high = rate.interval
    predicted = null.predicted_uncorrected()
    where = f"observed {rate.value:.4f} [{low:.4f}, {high:.4f}], {null.features} features"
    found = [checks.holds("drift.uncorrected_matches_independence", low <= predicted <= high,
                          "1 - (1 - size)^F", f"predicted {predicted:.4f}; {where}")]
    if null.features >= 10:
        found.append(checks.at_least("drift.uncorrected_inflated_above_alpha", low, null.alpha, "alpha",
                                     f"CI lower bound must exceed alpha; {where}"))
    return found


def detects_known_shift(points: Sequence[validation.PowerPoint], shift: float, window: int,
                        minimum: float = MIN_POWER) -> Check:
    point = next(p for p in points if p.shift == shift and p.window == window)
    low, high = point.detected.interval
    return checks.at_least(f"drift.detects_{point.dataset}_shift", point.detected.value, minimum,
                           f"power >= {minimum}", f"shift {shift}, window {window}: "
                           f"{point.detected.value:.3f} [{low:.3f}, {high:.3f}]")


def null_calibrated(points: Sequence[validation.PowerPoint], alpha: float) -> Check:
    """At shift 0 the detection rate is a false-alarm rate: not significantly above alpha."""
    nulls = [p for p in points if p.shift == 0]
    worst = max(nulls, key=lambda p: p.detected.interval[0])
    return checks.at_most(f"drift.{worst.dataset}_no_shift_within_alpha", worst.detected.interval[0], alpha, "alpha",
                          f"highest CI lower bound over {len(nulls)} windows at shift 0 (window {worst.window}: "
                          f"{worst.detected.value:.3f})")


def monitor_matches_sklearn(make_monitor: Callable[[], Monitor], stream: Stream, until: float,
                            windows: Sequence[tuple[float, float]]) -> list[Check]:
    """Replay the stream up to `until`; each window's metrics must equal scikit-learn's and
    numpy's on the predictions whose labels had arrived, and the unlabeled count must be
    everything else served in the window."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    monitor = make_monitor()
    stream.replay(monitor, until)
    worst = {"accuracy_prf": 0.0, "latency": 0.0, "unlabeled": 0.0}
    for start, stop in windows:
        got = monitor.window(start, stop)  # type: ignore[attr-defined]
        served = (stream.time >= start) & (stream.time < stop) & (stream.time <= until)
        joined = served & (stream.label_time <= until)
        truth, predicted = stream.truth[joined], stream.predicted[joined]
        precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="weighted",
                                                                   zero_division=0)
        expected = [accuracy_score(truth, predicted), precision, recall, f1]
        observed = [got.accuracy, got.precision, got.recall, got.f1]
        worst["accuracy_prf"] = max(worst["accuracy_prf"], *(abs(a - b) for a, b in zip(observed, expected)))
        latencies = np.percentile(stream.latency[served], [50, 95, 99])
        observed_latency = [got.latency_p50, got.latency_p95, got.latency_p99]
        worst["latency"] = max(worst["latency"], float(np.max(np.abs(latencies - observed_latency))))
        worst["unlabeled"] = max(worst["unlabeled"], abs(got.unlabeled - int(served.sum() - joined.sum())),
                                 abs(got.predictions - int(served.sum())))
    where = f"{len(windows)} windows, stream replayed to t={until:.1f}s"
    return [
        checks.at_most("performance.metrics_equal_sklearn", worst["accuracy_prf"], METRIC_TOLERANCE,
                       "sklearn accuracy_score, precision_recall_fscore_support(average='weighted')",
                       f"worst |difference| over accuracy/precision/recall/F1; {where}"),
        checks.at_most("performance.latency_percentiles_equal_numpy", worst["latency"], 0.0, "numpy.percentile",
                       f"p50/p95/p99; {where}"),
        checks.at_most("performance.unlabeled_counts_exact", worst["unlabeled"], 0.0, "labels arrived by then",
                       f"worst count difference (served, unlabeled); {where}"),
    ]


def totals_equal_window(make_monitor: Callable[[], Monitor], stream: Stream, until: float,
                        checkpoints: int = 16) -> Check:
    """The monitor's running totals (what a service publishes per request) equal a full
    window recomputed over everything it holds, at `checkpoints` points of the replay,
    evictions included when the monitor's capacity is below the stream's length."""
    monitor = make_monitor()
    events = stream.events(until)
    stops = set(np.linspace(0, len(events) - 1, checkpoints).astype(int).tolist())
    wrong = []
    for k, (_, kind, i) in enumerate(events):
        if kind == PREDICTION:
            monitor.record_prediction(stream.ids[i], stream.predicted[i], float(stream.latency[i]),
                                      float(stream.time[i]))
        else:
            monitor.record_label(stream.ids[i], stream.truth[i])
        if k in stops:
            totals, window = monitor.totals(), monitor.window()  # type: ignore[attr-defined]
            counts = (totals.predictions, totals.labeled, totals.unlabeled)
            if counts != (window.predictions, window.labeled, window.unlabeled) or \
                    not np.array_equal(totals.accuracy, window.accuracy, equal_nan=True):
                wrong.append(f"event {k}: totals {counts} acc {totals.accuracy!r}, window "
                             f"{(window.predictions, window.labeled, window.unlabeled)} acc {window.accuracy!r}")
    return checks.at_most("performance.running_totals_equal_window", float(len(wrong)), 0.0,
                          "window() over everything held", "; ".join(wrong[:3]) or
                          f"{len(stops)} checkpoints over {len(events)} events, "
                          f"{getattr(monitor, 'evicted', 0)} evictions")


def exposition_valid(exposition: bytes, expected_families: Sequence[str], promtool: str = "promtool") -> list[Check]:
    """The text passes `promtool check metrics` and prometheus_client's own parser, and
    holds every expected metric family."""
    from prometheus_client.parser import text_string_to_metric_families

    from reference.monitoring.promserver import promtool_check

    passed, output = promtool_check(exposition, promtool)
    try:
        families = {f.name for f in text_string_to_metric_families(exposition.decode())}
        parse_error = ""
    except ValueError as exc:
        families, parse_error = set(), str(exc)
    missing = sorted(set(expected_families) - families)
    return [
        checks.holds("prometheus.promtool_check_metrics", passed, "promtool check metrics", output[:500]),
        checks.holds("prometheus.client_parser_parses", not parse_error and not missing,
                     "prometheus_client.parser", parse_error or (f"missing {missing}" if missing else
                                                                 f"{len(families)} families")),
    ]


def json_log_valid(text: str, predictions: int, low_confidence: int) -> list[Check]:
    """Every line is one JSON object; one `prediction` event per prediction and one
    `low_confidence` warning per prediction below the threshold."""
    import json

    from reference.monitoring.logs import LOW_CONFIDENCE, PREDICTION

    lines = text.splitlines()
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            parsed.append(record)
    events = [(r.get("event"), r.get("level")) for r in parsed]
    return [
        checks.holds("logs.every_line_is_a_json_object", len(parsed) == len(lines) > 0, "json.loads per line",
                     f"{len(parsed)} of {len(lines)} lines parsed"),
        checks.holds("logs.one_event_per_prediction", events.count((PREDICTION, "info")) == predictions,
                     "predictions made", f"{events.count((PREDICTION, 'info'))} events for {predictions} predictions"),
        checks.holds("logs.low_confidence_warnings", events.count((LOW_CONFIDENCE, "warning")) == low_confidence,
                     "predictions below the threshold",
                     f"{events.count((LOW_CONFIDENCE, 'warning'))} warnings for {low_confidence} such predictions"),
    ]


def counters_equal(observed: dict[str, float | None], expected: dict[str, float], source: str) -> list[Check]:
    """Each counter read back equals the number of events actually made."""
    return [checks.holds(f"prometheus.{name}_equals_events", observed.get(name) == value, source,
                         f"read {observed.get(name)}, made {value:g}")
            for name, value in expected.items()]


def mmd_calibrated_and_powerful(results: Sequence[Any], alpha: float) -> list[Check]:
    """MMD on a correlation shift (validation.correlation_shift_power, weakest shift first,
    the first with no shift): false alarms within alpha, and the strongest shift seen."""
    null, strongest = results[0], results[-1]
    return [checks.at_most("drift.mmd_no_shift_within_alpha", null.mmd.interval[0], alpha, "alpha",
                           f"MMD false-alarm rate {null.mmd.value:.3f} over {null.mmd.trials} windows"),
            checks.at_least("drift.mmd_detects_correlation_shift", strongest.mmd.value,
                            0.8 if strongest.window >= 400 else 0.3, "power bound",
                            f"rho {strongest.correlation}, window {strongest.window}; per-feature "
                            f"tests: {strongest.per_feature.value:.3f}")]


def detector_matches_columns_ks(make_detector: Callable[[np.ndarray], Any], reference: np.ndarray,
                                current: np.ndarray) -> Check:
    """The detector's own per-feature KS (its fitted sorted reference, cut to the columns
    that can be tested) equals ks_2samp_columns on those columns, which the scipy check
    vouches for: the detector path the drift scenario times is a checked path. Column 0 of
    `current` gets a NaN, so the cut (SortedReference.subset) runs."""
    from reference.monitoring.ks import ks_2samp_columns

    current = np.array(current, dtype=np.float64)
    current[0, 0] = np.nan
    report = make_detector(reference).test(current)
    tested = [f for f in report.features if f.test == "ks" and np.isfinite(f.statistic)]
    plain = ks_2samp_columns(reference[:, 1:], current[:, 1:])
    if len(tested) != plain.statistic.size:
        return checks.holds("drift.detector_ks_equals_columns_ks", False, "ks_2samp_columns on the testable columns",
                            f"detector tested {len(tested)} features, expected {plain.statistic.size}")
    worst = max(float(np.max(np.abs(np.array([f.statistic for f in tested]) - plain.statistic))),
                float(np.max(np.abs(np.array([f.p_value for f in tested]) - plain.pvalue))))
    return checks.at_most("drift.detector_ks_equals_columns_ks", worst, PVALUE_TOLERANCE,
                          "ks_2samp_columns on the testable columns",
                          f"largest |difference| of D or p over {len(tested)} features, column 0 untestable")
