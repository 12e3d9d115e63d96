"""Optuna workers as a Slurm job array, through submitit: each array task is one worker
process on whatever node Slurm gives it, all sharing the study through a database URL
(the PostgreSQL of pgserver.py, or your own). submitit's local executor runs the same
array as local processes, which is how it is tested here.

    executor = slurm.executor(Path("jobs"), cluster=None, slurm_partition="cpu", timeout_min=60)
    study, reported = workers.run_workers(storage="postgresql+psycopg2://...", ..., run_jobs=slurm.job_array(executor))

(`cluster=None` lets submitit pick Slurm where `sbatch` exists; "local" forces local processes.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from reference.tuning.workers import JobRunner, Worker, WorkerJob


def executor(folder: Path, cluster: str | None = "local", timeout_min: int = 30, **parameters: Any
             ) -> submitit.AutoExecutor:
    """Where jobs go: submitit writes each job's pickled call, logs and result under `folder`
    (on a cluster: a directory every node mounts). Extra parameters are submitit's
    (`slurm_partition=...`, `cpus_per_task=...`)."""
    found = submitit.AutoExecutor(folder=folder, cluster=cluster)
    found.update_parameters(timeout_min=timeout_min, **parameters)
    return found


def job_array(executor: submitit.AutoExecutor) -> JobRunner:
    """A `run_jobs` for workers.run_workers: one array task per worker; waits for all, and
    raises the first task's error with its log if one failed."""

    def run(worker: Worker, jobs: list[WorkerJob]) -> list[list[tuple[int, float | None]]]:
        submitted = executor.map_array(worker, jobs)
        return [job.result() for job in submitted]

    return run
