"""Ray Tune on a private local cluster: ASHA stops trials only at its rungs (and an
off-by-one scheduler is caught), sweeps run through Ray, and no Ray process outlives the
cluster context."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("optuna")
psutil = pytest.importorskip("psutil")

from reference.tuning import conformance, objectives, ray_tune, sweep  # noqa: E402

ASHA = ray_tune.Asha(max_t=9, grace_period=1, reduction_factor=3)


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    with ray_tune.local_cluster(num_cpus=2) as running:
        yield running
    assert running.reaped == 0, "processes of the Ray session were still alive after ray.shutdown()"
    assert ray_tune._session_processes(running.session_root) == []
    assert not running.session_root.exists()


def stops(outcome: ray_tune.TuneOutcome) -> list[int]:
    return [trial.stopped_at for trial in outcome.trials]


def test_asha_stops_trials_only_at_its_rungs(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outcome = ray_tune.run_tune(objectives.learning_curve(steps=9), num_samples=9, storage_dir=tmp_path, seed=0,
                                scheduler=ASHA.scheduler())
    found = conformance.asha_stops_at_rungs("tuning.ray.asha", stops(outcome), ASHA.rungs(), ASHA.max_t)
    assert all(c.passed for c in found), found
    assert len(outcome.trials) == 9 and ASHA.rungs() == [1, 3, 9]
    best = outcome.best("max")
    assert best.stopped_at == 9 and best.config["quality"] == max(t.config["quality"] for t in outcome.trials)


@pytest.mark.breaks("tuning.ray.asha.stops_on_rungs")
def test_rung_check_catches_an_off_by_one_grace_period(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Planted bug: a scheduler built with grace_period + 1 while ASHA(grace_period=1) is claimed."""
    off_by_one = ray_tune.Asha(max_t=9, grace_period=2, reduction_factor=3).scheduler()
    outcome = ray_tune.run_tune(objectives.learning_curve(steps=9), num_samples=9, storage_dir=tmp_path, seed=0,
                                scheduler=off_by_one)
    found = conformance.asha_stops_at_rungs("tuning.ray.asha", stops(outcome), ASHA.rungs(), ASHA.max_t)
    assert not found[0].passed and "off-rung" in found[0].detail


def test_a_bayes_sweep_with_hyperband_runs_through_ray(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    parsed = sweep.parse({"method": "bayes", "run_cap": 6, "metric": {"name": "value", "goal": "maximize"},
                          "parameters": {"quality": {"min": 0.0, "max": 1.0}},
                          "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}})
    run = sweep.run_sweep(parsed, objectives.learning_curve(steps=9), backend="ray", seed=0, storage_dir=tmp_path)
    found = conformance.sweep_conforms("tuning.sweep.bayes", parsed.space, parsed.method, [p for p, _ in run.trials], 6)
    assert all(c.passed for c in found), found


def test_a_second_connection_in_the_same_process_is_refused(cluster) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="already connected"):
        with ray_tune.local_cluster(num_cpus=1):
            pass


def test_target_stopper_stops_everything_once_reached() -> None:
    stopper = ray_tune.TargetStopper(0.5, "max", "value")
    assert stopper("t1", {"value": 0.4}) is False and not stopper.stop_all()
    stopper("t2", {"value": 0.6})
    assert stopper.stop_all()


@pytest.mark.breaks("tuning.ray.cluster_stopped", "tuning.anytime.ray_cluster_stopped",
                    "tuning.sweep.ray_cluster_stopped")
def test_leftover_session_processes_are_reaped_and_reported(tmp_path: Path) -> None:
    """Planted leak: a process naming the session dir is still running after shutdown."""
    leak = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)",
                             str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert leak.stdout is not None and leak.stdout.readline() == "up\n"
        reaped = ray_tune._reap(tmp_path)
        gone = not psutil.pid_exists(leak.pid)  # before our own clean-up below
    finally:
        leak.kill()
        leak.wait()
    assert reaped == 1 and gone
    for name in ("tuning.ray.cluster_stopped", "tuning.anytime.ray_cluster_stopped",
                 "tuning.sweep.ray_cluster_stopped"):
        assert not conformance.nothing_left_running(name, reaped).passed
        assert conformance.nothing_left_running(name, 0).passed


def test_invalid_asha_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid ASHA"):
        ray_tune.Asha(max_t=3, grace_period=4)
    with pytest.raises(ValueError, match="num_cpus"):
        with ray_tune.local_cluster(num_cpus=0):
            pass
