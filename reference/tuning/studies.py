"""Optuna studies: samplers, pruners, the three storages, and running an Objective.

Storage kinds: "memory" (one process), "sqlite" (an RDB file: several processes or
machines share a study through it; any SQLAlchemy URL such as postgresql://... works the
same way) and "journal" (an append-only log file with a file lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from reference.tuning.objectives import Objective
from reference.tuning.space import suggest

STORAGE_KINDS = ("memory", "sqlite", "journal")
SQLITE_LOCK_TIMEOUT_S = 60  # writers from several processes wait for the lock this long


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose tpe or random")


def make_pruner(name: str, *, startup_trials: int = 2, warmup_steps: int = 1) -> optuna.pruners.BasePruner:
    """"median": stop a trial whose intermediate value is worse than the median of completed
    trials at the same step; "none": never stop one."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose median or none")


def storage_url(kind: str, directory: Path) -> str:
    """Where a storage kind keeps its study inside `directory` (a URL for RDB, a path for
    the journal); a URL containing '://' is taken as it is."""
    if "://" in kind:
        return kind
    if kind == "sqlite":
        return f"sqlite:///{directory / 'optuna.db'}"
    if kind == "journal":
        return str(directory / "optuna.journal")
    raise ValueError(f"unknown storage {kind!r}; choose {', '.join(STORAGE_KINDS)} or a database URL")


@dataclass(frozen=True)
class Heartbeat:
    """RDB heartbeats: a trial whose process stops beating for `grace_s` is marked FAIL by
    the next worker that starts a trial, and retried (same params) up to `max_retry` times."""

    interval_s: int = 1
    grace_s: int = 2
    max_retry: int = 1

    def storage_options(self) -> dict[str, Any]:
        return {"heartbeat_interval": self.interval_s, "grace_period": self.grace_s,
                "heartbeat_stale_trial_callback":
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)}


def open_storage(kind: str, directory: Path | None = None,
                 heartbeat: Heartbeat | None = None) -> optuna.storages.BaseStorage | None:
    """A storage object (None means in-memory). Every process that opens the same
    kind in the same directory sees the same studies. A heartbeat needs an RDB storage
    (JournalStorage has none: a killed worker's trial stays RUNNING there)."""
    if kind == "memory":
        return None
    if directory is None and "://" not in kind:
        raise ValueError(f"storage {kind!r} needs a directory")
    location = storage_url(kind, directory or Path("."))
    if kind == "journal":
        if heartbeat is not None:
            raise ValueError("JournalStorage has no heartbeat; use an RDB storage (sqlite or a database URL)")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(location))
    connect_args = {"timeout": SQLITE_LOCK_TIMEOUT_S} if location.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(location, engine_kwargs={"connect_args": connect_args},
                                      **(heartbeat.storage_options() if heartbeat else {}))


def as_optuna(objective: Objective) -> Any:
    """The objective as an Optuna callable: reports go to the trial, and the pruner's
    verdict stops it with TrialPruned."""

    def run(trial: optuna.Trial) -> float:
        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        return objective.fn(suggest(trial, objective.space), report)

    return run


def create_study(objective: Objective, *, sampler: optuna.samplers.BaseSampler,
                 pruner: optuna.pruners.BasePruner | None = None,
                 storage: optuna.storages.BaseStorage | None = None,
                 study_name: str | None = None, load_if_exists: bool = False) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=study_name,
                               direction=objective.direction, load_if_exists=load_if_exists)


def optimize(study: optuna.Study, objective: Objective, *, n_trials: int | None = None,
             timeout: float | None = None) -> optuna.Study:
    """Run trials until n_trials or timeout (seconds), whichever comes first."""
    if n_trials is None and timeout is None:
        raise ValueError("give n_trials, timeout or both: an unbounded study never stops")
    study.optimize(as_optuna(objective), n_trials=n_trials, timeout=timeout, gc_after_trial=False)
    return study


@dataclass(frozen=True)
class TrialRecord:
    """What identifies a trial's outcome, comparable across runs and storages."""

    number: int
    state: str
    params: tuple[tuple[str, Any], ...]
    value: float | None
    intermediate: tuple[tuple[int, float], ...]
    duration_s: float


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [
        TrialRecord(
            number=t.number, state=t.state.name, params=tuple(sorted(t.params.items())), value=t.value,
            intermediate=tuple(sorted(t.intermediate_values.items())),
            duration_s=(t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else 0.0,
        )
        for t in sorted(study.trials, key=lambda t: t.number)
    ]


def best_so_far(values: list[float | None], direction: str) -> np.ndarray:
    """Best value after each trial; a trial without a value (pruned, failed) carries the
    previous best forward (NaN until a first value exists)."""
    better = np.fmin if direction == "minimize" else np.fmax
    series = np.array([np.nan if v is None else v for v in values], dtype=float)
    return better.accumulate(series) if series.size else series
