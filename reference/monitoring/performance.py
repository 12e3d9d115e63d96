"""Model performance in production, where ground truth arrives late, out of order, or never.

Predictions are recorded when served (id, predicted class, latency, time); labels are
recorded whenever they turn up and are joined to their prediction by id. A label that
arrives before its prediction waits in a bounded pending set. Metrics for a time window
are computed over the predictions served in it that have a label by now: accuracy and
support-weighted precision, recall and F1 exactly as scikit-learn defines them
(`precision_recall_fscore_support(average="weighted", zero_division=0)`), latency
percentiles exactly as `numpy.percentile`, and how many predictions are still unlabeled —
accuracy over 3 labeled predictions out of 10 000 served is not a number to act on.

`totals()` answers the same question for everything the monitor holds in O(1): running
counts kept as predictions, labels and evictions happen, so a service can publish them on
every request instead of recomputing a window over up to `capacity` rows under its lock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

UNLABELED = -1
LATENCY_PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class WindowMetrics:
    start: float
    stop: float
    predictions: int
    labeled: int
    accuracy: float  # NaN when nothing in the window is labeled
    precision: float
    recall: float
    f1: float
    latency_p50: float  # NaN when the window is empty
    latency_p95: float
    latency_p99: float

    @property
    def unlabeled(self) -> int:
        return self.predictions - self.labeled


@dataclass(frozen=True)
class Totals:
    """Counts over every prediction the monitor holds; equal to `window()`'s, kept running."""

    predictions: int
    labeled: int
    correct: int

    @property
    def unlabeled(self) -> int:
        return self.predictions - self.labeled

    @property
    def accuracy(self) -> float:
        return self.correct / self.labeled if self.labeled else float("nan")


class Conflict(ValueError):
    """The event contradicts one already recorded: a prediction id seen before, or a second,
    different label for one prediction."""


class PerformanceMonitor:
    """Keeps the latest `capacity` predictions; older ones are evicted, and a label that
    arrives for an evicted or unknown prediction is counted in `orphan_labels`."""

    def __init__(self, capacity: int = 1_000_000, max_pending_labels: int = 100_000) -> None:
        if capacity < 1 or max_pending_labels < 0:
            raise ValueError("capacity must be positive and max_pending_labels non-negative")
        self.capacity, self.max_pending_labels = capacity, max_pending_labels
        self._classes: dict[Hashable, int] = {}
        self._slot: dict[Hashable, int] = {}  # prediction id -> row in the arrays
        self._ids: list[Hashable | None] = [None] * capacity
        self._time = np.full(capacity, np.nan)
        self._latency = np.full(capacity, np.nan)
        self._predicted = np.full(capacity, UNLABELED, dtype=np.int64)
        self._label = np.full(capacity, UNLABELED, dtype=np.int64)
        self._next = 0  # rows are a ring: the next prediction overwrites the oldest
        self._pending: dict[Hashable, int] = {}
        self.orphan_labels = 0
        self.evicted = 0
        self._held, self._labeled, self._correct = 0, 0, 0  # running counts behind totals()

    def record_prediction(self, prediction_id: Hashable, predicted: Hashable, latency_s: float,
                          timestamp: float) -> None:
        if prediction_id in self._slot:
            raise Conflict(f"prediction {prediction_id!r} was already recorded")
        if not (np.isfinite(latency_s) and latency_s >= 0 and np.isfinite(timestamp)):
            raise ValueError(f"latency and timestamp must be finite, latency >= 0: {latency_s!r}, {timestamp!r}")
        row = self._next % self.capacity
        if self._ids[row] is not None:
            del self._slot[self._ids[row]]
            self.evicted += 1
            self._count_label(row, -1)
        else:
            self._held += 1
        self._ids[row] = prediction_id
        self._slot[prediction_id] = row
        self._time[row], self._latency[row] = timestamp, latency_s
        self._predicted[row] = self._code(predicted)
        self._label[row] = self._pending.pop(prediction_id, UNLABELED)
        self._count_label(row, +1)
        self._next += 1

    def record_label(self, prediction_id: Hashable, label: Hashable) -> None:
        """Join a label to its prediction. Re-delivering the same label is harmless; a
        different label for the same prediction is an error."""
        code = self._code(label)
        row = self._slot.get(prediction_id)
        current = self._label[row] if row is not None else self._pending.get(prediction_id, UNLABELED)
        if current != UNLABELED:
            if current != code:
                raise Conflict(f"prediction {prediction_id!r} already has a different label")
            return
        if row is not None:
            self._label[row] = code
            self._count_label(row, +1)
        elif len(self._pending) < self.max_pending_labels:
            self._pending[prediction_id] = code
        else:
            self.orphan_labels += 1

    @property
    def pending_labels(self) -> int:
        return len(self._pending)

    def totals(self) -> Totals:
        """Predictions held, how many have a label, how many of those are right: O(1)."""
        return Totals(self._held, self._labeled, self._correct)

    def _count_label(self, row: int, sign: int) -> None:
        if self._label[row] != UNLABELED:
            self._labeled += sign
            self._correct += sign * int(self._label[row] == self._predicted[row])

    def window(self, start: float = -np.inf, stop: float = np.inf) -> WindowMetrics:
        """Metrics over predictions served in [start, stop)."""
        inside = (self._time >= start) & (self._time < stop)
        labeled = inside & (self._label != UNLABELED)
        latency = self._latency[inside]
        percentiles = np.percentile(latency, LATENCY_PERCENTILES) if latency.size else [np.nan] * 3
        scores = classification_scores(self._label[labeled], self._predicted[labeled])
        return WindowMetrics(start, stop, int(inside.sum()), int(labeled.sum()), *scores,
                             *(float(p) for p in percentiles))

    def sliding(self, width: float, step: float, start: float, stop: float) -> list[WindowMetrics]:
        """Windows [t, t + width) for t = start, start + step, ... while t + width <= stop."""
        if width <= 0 or step <= 0:
            raise ValueError("width and step must be positive")
        count = int(np.floor((stop - start - width) / step)) + 1
        return [self.window(start + k * step, start + k * step + width) for k in range(max(count, 0))]

    def _code(self, value: Hashable) -> int:
        return self._classes.setdefault(value, len(self._classes))


def classification_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float, float]:
    """Accuracy and support-weighted precision, recall, F1 with zero_division=0, over the
    classes present in either array (scikit-learn's definitions)."""
    if truth.size == 0:
        return (np.nan,) * 4
    classes, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    k = classes.size
    t, p = codes[:truth.size], codes[truth.size:]
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    hits = np.diag(confusion).astype(np.float64)
    support, called = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(called > 0, hits / called, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        denominator = support + called
        f1 = np.where(denominator > 0, 2 * hits / denominator, 0.0)
    weights = support / support.sum()
    return (float(hits.sum() / truth.size), float(weights @ precision), float(weights @ recall),
            float(weights @ f1))
