"""A worker killed in the middle of a trial, and a shared study that goes on without it.

Optuna documents what happens: the killed process leaves its trial RUNNING; with RDB
heartbeats (`heartbeat_interval`, `grace_period`) the next worker that starts a trial marks
it FAIL once its heartbeat is `grace_period` old, and `RetryHeartbeatStaleTrialCallback` enqueues a
copy with the same parameters, which some worker then runs. Here a victim process kills
itself (SIGKILL, as the OOM killer would) inside its first trial; survivors then fill the
study to a number of completed trials (`MaxTrialsCallback`, Optuna's recipe for
distributed studies).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from reference.tuning import objectives, studies

TRIAL_SLEEP_S = 0.05  # survivors' trials take this long, so both survivors get trials


@dataclass(frozen=True)
class FailoverJob:
    storage: str  # a storage kind in `directory` ("sqlite") or a database URL
    directory: str
    study_name: str
    heartbeat: studies.Heartbeat | None
    seed: int
    complete_target: int = 0  # survivors: stop once the study has this many COMPLETE trials


def _storage(job: FailoverJob) -> optuna.storages.BaseStorage:
    storage = studies.open_storage(job.storage, Path(job.directory), heartbeat=job.heartbeat)
    assert storage is not None, "an in-memory study cannot be shared"
    return storage


def _load(job: FailoverJob) -> optuna.Study:
    return optuna.load_study(study_name=job.study_name, storage=_storage(job),
                             sampler=studies.make_sampler("random", job.seed))


def _branin(trial: optuna.Trial) -> float:
    return objectives.branin_value(trial.suggest_float("x1", -5.0, 10.0), trial.suggest_float("x2", 0.0, 15.0))


def victim(job: FailoverJob) -> None:
    """Start a trial, let the heartbeat thread beat once or twice, then die without
    telling the storage anything."""

    def die(trial: optuna.Trial) -> float:
        _branin(trial)
        time.sleep(1.5 * (job.heartbeat.interval_s if job.heartbeat else 1))
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _load(job).optimize(die, n_trials=1)


def survivor(job: FailoverJob) -> list[int]:
    """Run trials until the study holds `complete_target` completed ones; returns the
    numbers this worker completed."""

    def slow_branin(trial: optuna.Trial) -> float:
        time.sleep(TRIAL_SLEEP_S)
        return _branin(trial)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _load(job)
    done: list[int] = []
    study.optimize(slow_branin, callbacks=[optuna.study.MaxTrialsCallback(job.complete_target),
                                           lambda _s, t: done.append(t.number) if t.state == TrialState.COMPLETE
                                           else None])
    return done


@dataclass(frozen=True)
class FailoverOutcome:
    killed_number: int
    victim_exitcode: int | None
    state_after_kill: str  # what the storage said right after the victim died
    states: dict[int, str]  # every trial's final state
    retried_from: dict[int, int]  # retry trial number -> the failed trial it copies
    same_params: dict[int, bool]  # retry number -> params equal the failed trial's
    completed_by_survivors: list[list[int]]
    wait_s: float  # from the kill until the stale trial was marked FAIL (None-free: -1 if never)


def kill_one_worker(*, storage: str, directory: Path, heartbeat: studies.Heartbeat | None, survivors: int = 2,
                    complete_target: int = 12, seed: int = 0) -> FailoverOutcome:
    """Create the study, run a victim that dies mid-trial, wait out the grace period, run
    `survivors` workers to `complete_target` completed trials, and report what the storage
    holds."""
    spawn = multiprocessing.get_context("spawn")
    name = f"failover-{uuid.uuid4().hex[:8]}"  # a database keeps every study run against it
    base = FailoverJob(storage, str(directory), name, heartbeat, seed)
    shared = _storage(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=shared, direction="minimize")
    process = spawn.Process(target=victim, args=(base,))
    process.start()
    process.join(timeout=120)
    if process.is_alive():
        process.kill()
        process.join()
        raise RuntimeError("the victim worker did not die inside its trial")
    killed_at = time.time()
    killed = study.get_trials(deepcopy=False)[0]
    state_after_kill = killed.state.name
    time.sleep(heartbeat.grace_s + heartbeat.interval_s if heartbeat else 0)  # the heartbeat is stale now
    jobs = [FailoverJob(storage, str(directory), name, heartbeat, seed + 1 + i, complete_target)
            for i in range(survivors)]
    with ProcessPoolExecutor(max_workers=survivors, mp_context=spawn) as pool:
        completed = list(pool.map(survivor, jobs))
    trials = optuna.load_study(study_name=name, storage=shared).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    retried = {t.number: origin for t in trials
               if (origin := RetryHeartbeatStaleTrialCallback.retried_trial_number(t)) is not None}
    final = by_number[killed.number]
    return FailoverOutcome(
        killed_number=killed.number, victim_exitcode=process.exitcode, state_after_kill=state_after_kill,
        states={t.number: t.state.name for t in trials}, retried_from=retried,
        same_params={n: by_number[n].params == by_number[o].params for n, o in retried.items()},
        completed_by_survivors=completed,
        wait_s=(final.datetime_complete.timestamp() - killed_at) if final.datetime_complete else -1.0)
