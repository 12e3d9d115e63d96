"""Optuna workers submitted as a job array through submitit (its local executor here, Slurm
on a cluster), sharing one study through a PostgreSQL server: nothing lost or duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("submitit")
pytest.importorskip("psycopg2")

from reference.tuning import conformance, pgserver, slurm, studies, workers  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(pgserver.unavailable() is not None, reason=str(pgserver.unavailable()))
def test_a_submitit_job_array_shares_a_postgres_study(tmp_path: Path) -> None:
    with pgserver.postgres_server() as server:
        study, reported = workers.run_workers(storage=server.url, directory=tmp_path, objective="branin", workers=2,
                                              trials_per_worker=3, sampler="random",
                                              run_jobs=slurm.job_array(slurm.executor(tmp_path / "jobs")))
        records = studies.trial_records(study)
    found = conformance.shared_study_complete("tuning.optuna.storage.postgres", records, reported, 2, 3)
    assert all(c.passed for c in found), found
    assert len(list((tmp_path / "jobs").glob("*_result.pkl"))) == 2  # two array tasks, each returned
