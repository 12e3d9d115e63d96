"""The label-joined performance monitor against scikit-learn and numpy, with the
conformance check fed planted bugs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.metrics import precision_recall_fscore_support  # noqa: E402

from reference.monitoring.conformance import monitor_matches_sklearn, totals_equal_window  # noqa: E402
from reference.monitoring.performance import PerformanceMonitor, classification_scores  # noqa: E402
from reference.monitoring.simulation import simulated_stream  # noqa: E402

STREAM = simulated_stream(3000, classes=4, seed=11)
UNTIL = 0.8 * float(STREAM.time[-1])
WINDOWS = [(0.0, UNTIL), (UNTIL - 20.0, UNTIL), (5.0, 10.0), (UNTIL / 2, UNTIL / 2 + 1.0)]


def test_stream_has_late_out_of_order_early_and_missing_labels() -> None:
    labeled = ~np.isnan(STREAM.label_time)
    assert 0.7 < labeled.mean() < 0.9
    assert (STREAM.label_time[labeled] < STREAM.time[labeled]).any()  # before the prediction
    arrival = STREAM.label_time[labeled]
    assert (np.diff(arrival[np.argsort(STREAM.time[labeled])]) < 0).any()  # out of order
    assert ((arrival > UNTIL) & (STREAM.time[labeled] <= UNTIL)).any()  # still in flight at UNTIL


def test_monitor_matches_sklearn_and_numpy() -> None:
    found = monitor_matches_sklearn(lambda: PerformanceMonitor(capacity=5000), STREAM, UNTIL, WINDOWS)
    assert [c.passed for c in found] == [True, True, True], [c.detail for c in found]


class DropsEarlyLabels(PerformanceMonitor):
    """Planted bug: a label that arrives before its prediction is thrown away."""

    def record_label(self, prediction_id, label) -> None:  # type: ignore[no-untyped-def]
        if prediction_id in self._slot:
            super().record_label(prediction_id, label)


class JoinsByArrivalOrder(PerformanceMonitor):
    """Planted bug: labels joined to the oldest unlabeled prediction, not by id."""

    def record_label(self, prediction_id, label) -> None:  # type: ignore[no-untyped-def]
        waiting = np.flatnonzero((self._label == -1) & ~np.isnan(self._time))
        if waiting.size:
            self._label[waiting[0]] = self._code(label)


class NearestRankPercentiles(PerformanceMonitor):
    """Planted bug: nearest-rank latency percentiles instead of numpy's linear ones."""

    def window(self, start=-np.inf, stop=np.inf):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        metrics = super().window(start, stop)
        inside = (self._time >= start) & (self._time < stop)
        p99 = float(np.percentile(self._latency[inside], 99, method="nearest"))
        return replace(metrics, latency_p99=p99)


class MacroAveraged(PerformanceMonitor):
    """Planted bug: unweighted (macro) F1."""

    def window(self, start=-np.inf, stop=np.inf):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        metrics = super().window(start, stop)
        inside = (self._time >= start) & (self._time < stop) & (self._label != -1)
        f1 = precision_recall_fscore_support(self._label[inside], self._predicted[inside], average="macro",
                                             zero_division=0)[2]
        return replace(metrics, f1=float(f1))


@pytest.mark.parametrize(("broken", "failing"), [
    pytest.param(DropsEarlyLabels, "performance.unlabeled_counts_exact",
                 marks=pytest.mark.breaks("performance.unlabeled_counts_exact")),
    pytest.param(JoinsByArrivalOrder, "performance.metrics_equal_sklearn",
                 marks=pytest.mark.breaks("performance.metrics_equal_sklearn")),
    pytest.param(NearestRankPercentiles, "performance.latency_percentiles_equal_numpy",
                 marks=pytest.mark.breaks("performance.latency_percentiles_equal_numpy")),
    pytest.param(MacroAveraged, "performance.metrics_equal_sklearn",
                 marks=pytest.mark.breaks("performance.metrics_equal_sklearn")),
])
def test_check_catches_planted_bug(broken: type[PerformanceMonitor], failing: str) -> None:
    found = {c.name: c.passed for c in monitor_matches_sklearn(lambda: broken(capacity=5000), STREAM, UNTIL, WINDOWS)}
    assert not found[failing]


def test_scores_equal_sklearn_including_classes_never_predicted() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    predicted = np.array([0, 1, 1, 1, 2, 0, 0, 4])
    accuracy, precision, recall, f1 = classification_scores(truth, predicted)
    expected = precision_recall_fscore_support(truth, predicted, average="weighted", zero_division=0)
    assert accuracy == pytest.approx(4 / 8)
    assert (precision, recall, f1) == pytest.approx(expected[:3], abs=1e-15)
    assert all(np.isnan(classification_scores(np.array([], int), np.array([], int))))


def test_sliding_windows_and_counts() -> None:
    monitor = PerformanceMonitor()
    for k in range(10):
        monitor.record_prediction(f"p{k}", "yes" if k % 2 else "no", latency_s=0.001 * (k + 1), timestamp=float(k))
    for k in range(0, 10, 3):
        monitor.record_label(f"p{k}", "no")
    windows = monitor.sliding(width=4.0, step=2.0, start=0.0, stop=10.0)
    assert [(w.start, w.stop, w.predictions, w.labeled) for w in windows] == [
        (0.0, 4.0, 4, 2), (2.0, 6.0, 4, 1), (4.0, 8.0, 4, 1), (6.0, 10.0, 4, 2)]
    assert [w.accuracy for w in windows] == [0.5, 0.0, 1.0, 0.5]  # p0, p6 right; p3, p9 wrong
    assert windows[0].unlabeled == 2
    assert windows[0].latency_p50 == pytest.approx(np.percentile([0.001, 0.002, 0.003, 0.004], 50))
    empty = monitor.window(100.0, 200.0)
    assert empty.predictions == 0 and np.isnan(empty.accuracy) and np.isnan(empty.latency_p99)


def test_duplicates_redelivery_eviction_and_orphans() -> None:
    monitor = PerformanceMonitor(capacity=3, max_pending_labels=1)
    monitor.record_prediction("a", "x", 0.01, 0.0)
    with pytest.raises(ValueError, match="already recorded"):
        monitor.record_prediction("a", "x", 0.01, 1.0)
    monitor.record_label("a", "x")
    monitor.record_label("a", "x")  # at-least-once delivery: harmless
    with pytest.raises(ValueError, match="different label"):
        monitor.record_label("a", "y")
    monitor.record_label("early", "x")  # waits for its prediction
    monitor.record_label("unknown", "x")  # pending set full: an orphan
    assert monitor.pending_labels == 1 and monitor.orphan_labels == 1
    for k, name in enumerate(["b", "c", "early"]):
        monitor.record_prediction(name, "x", 0.01, float(k + 1))
    assert monitor.evicted == 1 and monitor.pending_labels == 0  # "a" fell out of the ring
    window = monitor.window()
    assert (window.predictions, window.labeled) == (3, 1)
    monitor.record_label("a", "x")  # its prediction is gone
    assert monitor.pending_labels == 1


@pytest.mark.parametrize(("latency", "timestamp"), [(-1.0, 0.0), (float("nan"), 0.0), (0.1, float("inf"))])
def test_bad_prediction_records_rejected(latency: float, timestamp: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        PerformanceMonitor().record_prediction("a", "x", latency, timestamp)


def test_running_totals_equal_a_full_window_through_evictions() -> None:
    found = totals_equal_window(lambda: PerformanceMonitor(capacity=700), STREAM, UNTIL)
    assert found.passed, found.detail
    assert "evictions" in found.detail and not found.detail.startswith("0 checkpoints")


class ForgetsEvictedLabels(PerformanceMonitor):
    """Planted bug: an evicted prediction's label stays in the running totals."""

    def _count_label(self, row: int, sign: int) -> None:
        if sign > 0:
            super()._count_label(row, sign)


class ForgetsEarlyLabels(PerformanceMonitor):
    """Planted bug: a label that waited for its prediction joins it but is never counted."""

    def record_prediction(self, prediction_id, predicted, latency_s, timestamp) -> None:  # type: ignore[no-untyped-def]
        early = self._pending.pop(prediction_id, None)
        super().record_prediction(prediction_id, predicted, latency_s, timestamp)
        if early is not None:
            self._label[self._slot[prediction_id]] = early


@pytest.mark.breaks("performance.running_totals_equal_window")
@pytest.mark.parametrize("broken", [ForgetsEvictedLabels, ForgetsEarlyLabels])
def test_totals_check_catches_planted_bugs(broken: type[PerformanceMonitor]) -> None:
    found = totals_equal_window(lambda: broken(capacity=700), STREAM, UNTIL)
    assert not found.passed and found.observed > 0, found.detail
