"""A seeded stream of served predictions and their labels, as production delivers them:
labels late (exponential delay), out of order, a few before their prediction is even
recorded, and some never. Used to exercise the performance monitor against ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

PREDICTION, LABEL = 0, 1


class Monitor(Protocol):
    def record_prediction(self, prediction_id: str, predicted: str, latency_s: float, timestamp: float) -> None: ...
    def record_label(self, prediction_id: str, label: str) -> None: ...


@dataclass(frozen=True)
class Stream:
    ids: list[str]
    time: np.ndarray  # when each prediction was served
    predicted: np.ndarray  # class names
    truth: np.ndarray
    latency: np.ndarray  # seconds
    label_time: np.ndarray  # when its label arrives; NaN: never

    def events(self, until: float = np.inf) -> list[tuple[float, int, int]]:
        """(time, PREDICTION | LABEL, index) in arrival order, up to `until`."""
        found = [(t, PREDICTION, i) for i, t in enumerate(self.time) if t <= until]
        found += [(t, LABEL, i) for i, t in enumerate(self.label_time) if t <= until]
        return sorted(found)

    def replay(self, monitor: Monitor, until: float = np.inf) -> None:
        for _, kind, i in self.events(until):
            if kind == PREDICTION:
                monitor.record_prediction(self.ids[i], self.predicted[i], float(self.latency[i]), float(self.time[i]))
            else:
                monitor.record_label(self.ids[i], self.truth[i])


def simulated_stream(n: int, classes: int = 3, accuracy: float = 0.8, labeled: float = 0.8,
                     early: float = 0.02, mean_label_delay_s: float = 30.0, seed: int = 0) -> Stream:
    """n predictions about 10 ms apart; `labeled` of them ever get a label, `early` of those
    before the prediction is recorded."""
    rng = np.random.default_rng(seed)
    names = np.array([f"class_{k}" for k in range(classes)])
    truth = rng.choice(classes, size=n, p=np.linspace(2, 1, classes) / np.linspace(2, 1, classes).sum())
    wrong = (truth + rng.integers(1, classes, size=n)) % classes
    predicted = np.where(rng.random(n) < accuracy, truth, wrong)
    served = np.cumsum(rng.exponential(0.01, size=n))
    delay = rng.exponential(mean_label_delay_s, size=n)
    delay = np.where(rng.random(n) < early, -rng.uniform(0.001, 0.005, size=n), delay)
    label_time = np.where(rng.random(n) < labeled, served + delay, np.nan)
    latency = rng.lognormal(np.log(0.005), 0.5, size=n)
    return Stream([f"p{i}" for i in range(n)], served, names[predicted], names[truth], latency, label_time)
