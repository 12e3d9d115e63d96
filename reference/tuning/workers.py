"""Several worker processes sharing one Optuna study through its storage: how a user scales
Optuna past one process (or machine) with an RDB URL. Each worker loads the study by name,
runs its own trials, and returns (trial number, value) of every trial it finished, so the
caller can prove nothing was lost or duplicated."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from reference.tuning import objectives, studies


@dataclass(frozen=True)
class WorkerJob:
    storage: str  # a storage kind ("sqlite", "journal") or a database URL
    directory: str
    study_name: str
    objective: str
    objective_options: tuple[tuple[str, Any], ...]
    sampler: str
    seed: int  # each worker seeds its own sampler: identical seeds would propose identical points
    trials: int


def optimize_worker(job: WorkerJob) -> list[tuple[int, float | None]]:
    """Run `job.trials` trials of the shared study; returns what this worker finished."""
    objective = objectives.get(job.objective, **dict(job.objective_options))
    objective.prepare()
    storage = studies.open_storage(job.storage, Path(job.directory))
    assert storage is not None, "run_workers refuses in-memory storage"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=job.study_name, storage=storage,
                              sampler=studies.make_sampler(job.sampler, job.seed))
    finished: list[tuple[int, float | None]] = []
    study.optimize(studies.as_optuna(objective), n_trials=job.trials,
                   callbacks=[lambda _study, trial: finished.append((trial.number, trial.value))])
    return finished


Worker = Callable[[WorkerJob], list[tuple[int, float | None]]]
JobRunner = Callable[[Worker, list[WorkerJob]], list[list[tuple[int, float | None]]]]


def process_pool(worker: Worker, jobs: list[WorkerJob]) -> list[list[tuple[int, float | None]]]:
    """Each job in a fresh interpreter (spawn), as on separate machines (no forked DB connections)."""
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(worker, jobs))


def run_workers(*, storage: str, directory: Path, objective: str, workers: int, trials_per_worker: int,
                sampler: str = "tpe", seed: int = 0, objective_options: dict[str, Any] | None = None,
                worker: Worker = optimize_worker, run_jobs: JobRunner = process_pool,
                ) -> tuple[optuna.Study, list[list[tuple[int, float | None]]]]:
    """Create the study, run `workers` jobs against it (local processes, or a cluster's jobs
    through `run_jobs`: see slurm.py), return the study as the storage holds it and what each
    worker reported."""
    if storage == "memory":
        raise ValueError("an in-memory study cannot be shared between processes; use sqlite, journal or a URL")
    name = f"shared-{objective}-{uuid.uuid4().hex[:8]}"  # a database server keeps every earlier study
    options = tuple(sorted((objective_options or {}).items()))
    shared = studies.open_storage(storage, directory)
    studies.create_study(objectives.get(objective, **dict(options)),
                         sampler=studies.make_sampler(sampler, seed), storage=shared, study_name=name)
    jobs = [WorkerJob(storage, str(directory), name, objective, options, sampler, seed + 1 + index,
                      trials_per_worker) for index in range(workers)]
    reported = run_jobs(worker, jobs)
    assert shared is not None
    return optuna.load_study(study_name=name, storage=shared), reported
