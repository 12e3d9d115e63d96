"""The performance monitor's edges, written against mutants `nox -s mutate` found alive:
argument bounds, counters that must count (not just become 1), the ring's capacity, an
early label contradicted before its prediction arrives, windows that do not start at 0, and
a class seen once. (Equivalent survivors are listed in the mutation report: ring offset and
direction, errstate arguments, astype(None), and the F1/recall fallbacks that the classes
present in either array can never reach.)"""

from __future__ import annotations

import numpy as np
import pytest

from reference.monitoring.performance import Conflict, PerformanceMonitor, classification_scores


@pytest.mark.parametrize(("capacity", "pending"), [(0, 10), (5, -1)])
def test_capacity_below_one_or_negative_pending_is_refused(capacity: int, pending: int) -> None:
    with pytest.raises(ValueError, match="capacity must be positive and max_pending_labels non-negative"):
        PerformanceMonitor(capacity=capacity, max_pending_labels=pending)


def test_the_smallest_monitor_works_and_keeps_no_early_label() -> None:
    monitor = PerformanceMonitor(capacity=1, max_pending_labels=0)
    monitor.record_label("early", 1)  # nowhere to keep it
    assert monitor.orphan_labels == 1 and monitor.pending_labels == 0
    monitor.record_prediction("a", 1, 0.0, 1.0)  # a zero latency is a latency
    monitor.record_label("a", 1)
    assert monitor.totals().labeled == 1 and monitor.window().latency_p50 == 0.0


def test_counters_count() -> None:
    monitor = PerformanceMonitor(capacity=2, max_pending_labels=0)
    for k in range(5):
        monitor.record_prediction(k, 0, 0.01, float(k))
    monitor.record_label("gone-1", 0)
    monitor.record_label("gone-2", 0)
    assert monitor.evicted == 3 and monitor.orphan_labels == 2


def test_the_ring_holds_exactly_capacity_predictions() -> None:
    monitor = PerformanceMonitor(capacity=4)
    for k in range(4):
        monitor.record_prediction(k, 0, 0.01, float(k))
    assert monitor.evicted == 0 and monitor.totals().predictions == 4
    monitor.record_prediction(4, 0, 0.01, 4.0)
    assert monitor.evicted == 1 and monitor.window().predictions == 4
    assert monitor.window(0.0, 1.0).predictions == 0  # the oldest went first


def test_two_different_early_labels_conflict() -> None:
    monitor = PerformanceMonitor()
    monitor.record_label("x", 1)
    monitor.record_label("x", 1)  # re-delivered: harmless
    with pytest.raises(Conflict):
        monitor.record_label("x", 2)


def test_sliding_windows_away_from_time_zero() -> None:
    monitor = PerformanceMonitor()
    for t in range(100, 110):
        monitor.record_prediction(t, 0, 0.01, float(t))
    windows = monitor.sliding(width=4.0, step=2.0, start=100.0, stop=110.0)
    assert [(w.start, w.predictions) for w in windows] == [(100.0, 4), (102.0, 4), (104.0, 4), (106.0, 4)]
    assert monitor.sliding(width=20.0, step=1.0, start=100.0, stop=110.0) == []  # wider than the span: none
    assert len(monitor.sliding(width=1.0, step=1.0, start=100.0, stop=110.0)) == 10


@pytest.mark.parametrize(("width", "step"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (0.0, 0.0)])
def test_sliding_refuses_a_non_positive_width_or_step(width: float, step: float) -> None:
    with pytest.raises(ValueError, match="width and step must be positive"):
        PerformanceMonitor().sliding(width=width, step=step, start=0.0, stop=10.0)


def test_a_class_seen_once_and_predicted_right_counts_fully_in_recall() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    truth, predicted = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    accuracy, precision, recall, f1 = classification_scores(truth, predicted)
    expected = precision_recall_fscore_support(truth, predicted, average="weighted", zero_division=0)[:3]
    assert accuracy == 0.75 and (precision, recall, f1) == pytest.approx(expected, abs=1e-15)
