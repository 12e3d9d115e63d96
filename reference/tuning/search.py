"""One search run (a method, a seed, a budget) recorded the same way whatever ran it, so
TPE, random search and ASHA can be compared on anytime curves: best-so-far after each
trial and at each moment of wall time, and the time to reach a target."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference.tuning import studies
from reference.tuning.objectives import Objective


@dataclass
class SearchRun:
    method: str
    seed: int
    direction: str
    values: list[float] = field(default_factory=list)  # each finished trial's value, in finishing order
    finished_s: list[float] = field(default_factory=list)  # seconds from the start to each trial's end
    steps: list[int] = field(default_factory=list)  # intermediate steps each trial ran (its compute)

    def best_so_far(self) -> np.ndarray:
        return studies.best_so_far(list(self.values), self.direction)

    def best_at(self, times: np.ndarray) -> np.ndarray:
        """Best value among trials finished by each time (NaN before the first finished)."""
        curve = self.best_so_far()
        index = np.searchsorted(np.asarray(self.finished_s), times, side="right") - 1
        return np.where(index >= 0, curve[np.clip(index, 0, None)], np.nan)

    def time_to(self, target: float) -> float | None:
        """Seconds until the best value first reached the target; None if it never did."""
        reached = self.best_so_far() >= target if self.direction == "maximize" else self.best_so_far() <= target
        hits = np.flatnonzero(reached)
        return float(self.finished_s[hits[0]]) if hits.size else None


def optuna_search(objective: Objective, method: str, seed: int, *, n_trials: int,
                  timeout: float | None = None) -> SearchRun:
    """Sequential Optuna search with the TPE or random sampler, in memory."""
    study = studies.create_study(objective, sampler=studies.make_sampler(method, seed))
    started = time.time()
    studies.optimize(study, objective, n_trials=n_trials, timeout=timeout)
    run = SearchRun(method, seed, objective.direction)
    finished = sorted((t.datetime_complete.timestamp(), t.value, len(t.intermediate_values) or 1)
                      for t in study.trials if t.value is not None and t.datetime_complete is not None)
    for completed, value, steps in finished:
        run.values.append(value)
        run.finished_s.append(completed - started)
        run.steps.append(steps)
    return run


def asha_search(objective: Objective, seed: int, *, n_trials: int, max_t: int, grace_period: int,
                reduction_factor: int, storage_dir: Path, concurrency: int = 1) -> SearchRun:
    """Random search under Ray Tune's ASHA on the connected cluster; a stopped trial counts
    with the last value it reported."""
    from reference.tuning import ray_tune

    asha = ray_tune.Asha(max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)
    outcome = ray_tune.run_tune(objective, num_samples=n_trials, storage_dir=storage_dir, seed=seed,
                                scheduler=asha.scheduler(), max_concurrent=concurrency)
    run = SearchRun("asha", seed, objective.direction)
    for trial in sorted(outcome.trials, key=lambda t: t.finished_at):
        run.values.append(trial.value)
        run.finished_s.append(trial.finished_at - outcome.started_at)
        run.steps.append(trial.stopped_at)
    return run
