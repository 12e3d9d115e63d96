"""Several processes sharing one study through its storage: exactly N*M trials, no duplicate
numbers, no lost results; and the check fails when the workers do not really share it."""

from __future__ import annotations

from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from reference.tuning import conformance, objectives, studies, workers  # noqa: E402

WORKERS, TRIALS = 3, 4


def isolated_worker(job: workers.WorkerJob) -> list[tuple[int, float | None]]:
    """Planted bug: each worker optimises its own in-memory study of the same name, so
    the shared storage never sees its trials (the results are lost)."""
    objective = objectives.get(job.objective)
    study = studies.create_study(objective, sampler=studies.make_sampler(job.sampler, job.seed),
                                 study_name=job.study_name)
    finished: list[tuple[int, float | None]] = []
    study.optimize(studies.as_optuna(objective), n_trials=job.trials,
                   callbacks=[lambda _s, t: finished.append((t.number, t.value))])
    return finished


def shared_checks(tmp_path: Path, storage: str, worker=workers.optimize_worker) -> list:  # type: ignore[no-untyped-def]
    study, reported = workers.run_workers(storage=storage, directory=tmp_path, objective="branin",
                                          workers=WORKERS, trials_per_worker=TRIALS, worker=worker)
    return conformance.shared_study_complete(f"tuning.optuna.workers.{storage}", studies.trial_records(study), reported,
                                             WORKERS, TRIALS)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_workers_share_one_study_without_losing_a_trial(tmp_path: Path, storage: str) -> None:
    found = shared_checks(tmp_path, storage)
    assert all(c.passed for c in found), found
    assert found[0].observed == WORKERS * TRIALS


@pytest.mark.breaks("tuning.optuna.workers.<storage>.trial_count", "tuning.optuna.workers.<storage>.no_lost_results")
def test_shared_study_check_catches_workers_that_do_not_share(tmp_path: Path) -> None:
    found = {c.name: c for c in shared_checks(tmp_path, "sqlite", worker=isolated_worker)}
    count = found["tuning.optuna.workers.sqlite.trial_count"]
    assert not count.passed and count.observed == 0
    assert not found["tuning.optuna.workers.sqlite.no_lost_results"].passed


@pytest.mark.breaks("tuning.optuna.workers.<storage>.no_lost_results", "tuning.optuna.workers.<storage>.numbers_unique")
def test_a_changed_or_duplicated_result_is_caught() -> None:
    record = studies.TrialRecord(number=0, state="COMPLETE", params=(), value=1.0, intermediate=(), duration_s=0.0)
    name = "tuning.optuna.workers.sqlite"
    changed = conformance.shared_study_complete(name, [record], [[(0, 2.0)]], 1, 1)
    assert not changed[2].passed
    duplicated = conformance.shared_study_complete(name, [record, record], [[(0, 1.0)], [(0, 1.0)]], 2, 1)
    assert duplicated[0].passed and not duplicated[1].passed  # right count, numbers repeated


def test_an_in_memory_study_cannot_be_shared(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be shared"):
        workers.run_workers(storage="memory", directory=tmp_path, objective="branin", workers=2, trials_per_worker=1)
