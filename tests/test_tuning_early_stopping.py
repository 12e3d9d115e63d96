"""Every early-stopping backend stops a hopeless trial: Ray Tune's ASHA scheduler and a sweep's
`early_terminate` (hyperband, run as successive halving by Optuna). Optuna's MedianPruner has
its own proof in test_tuning_optuna.py (the hopeless half pruned by step 2).

The objective is the learning curve (value = quality x step / steps): quality 0 is a trial no
amount of training rescues. Each backend must stop it before max_t while the best trial runs
to the end; the same run without the scheduler (the planted bug: early stopping silently off)
lets it run to max_t."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")

from reference.tuning import conformance, objectives, sweep  # noqa: E402

STEPS = 9
HOPELESS = 0.0
QUALITIES = [0.9, 0.8, 0.7, 0.6, HOPELESS]  # the hopeless one last: ASHA judges against those before it


def hyperband_grid(early_terminate: bool) -> sweep.Sweep:
    config = {"method": "grid", "metric": {"name": "value", "goal": "maximize"},
              "parameters": {"quality": {"values": QUALITIES}}}
    if early_terminate:
        config["early_terminate"] = {"type": "hyperband", "min_iter": 1, "eta": 3}
    return sweep.parse(config)


def outcome_of(run: sweep.SweepRun, quality: float) -> float | None:
    return next(value for params, value in run.trials if params["quality"] == quality)


def test_sweep_early_terminate_stops_the_hopeless_trial() -> None:
    run = sweep.run_sweep(hyperband_grid(True), objectives.learning_curve(STEPS), seed=1)
    assert len(run.trials) == len(QUALITIES)
    assert run.trials[0][0]["quality"] != HOPELESS, "seed must not put the hopeless trial first (nothing to beat)"
    assert outcome_of(run, HOPELESS) is None, run.trials  # pruned
    assert outcome_of(run, max(QUALITIES)) == pytest.approx(max(QUALITIES))  # the best ran to the end


def test_without_early_terminate_the_hopeless_trial_runs_to_the_end() -> None:
    """The planted bug: the sweep's early_terminate dropped on the way to the backend."""
    run = sweep.run_sweep(hyperband_grid(False), objectives.learning_curve(STEPS), seed=1)
    assert outcome_of(run, HOPELESS) == 0.0


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    from reference.tuning import ray_tune

    with ray_tune.local_cluster(num_cpus=2) as running:
        yield running
    assert running.reaped == 0


def stopped_at(scheduler, tmp_path: Path) -> dict[float, int]:  # type: ignore[no-untyped-def]
    """{quality: the iteration its trial stopped at}, trials run one at a time in QUALITIES order."""
    from ray import tune

    from reference.tuning import ray_tune

    outcome = ray_tune.run_tune(objectives.learning_curve(STEPS), num_samples=1, storage_dir=tmp_path, seed=0,
                                scheduler=scheduler, param_space={"quality": tune.grid_search(QUALITIES)},
                                max_concurrent=1)
    return {trial.config["quality"]: trial.stopped_at for trial in outcome.trials}


@pytest.mark.slow
@pytest.mark.breaks("tuning.ray.asha.stopped_early")
def test_asha_stops_the_hopeless_trial_at_its_first_rung(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from reference.tuning import ray_tune

    asha = ray_tune.Asha(max_t=STEPS, grace_period=1, reduction_factor=3)
    stops = stopped_at(asha.scheduler(), tmp_path / "asha")
    assert stops[HOPELESS] == asha.rungs()[0] < STEPS, stops
    assert stops[max(QUALITIES)] == STEPS, stops
    assert all(c.passed for c in conformance.asha_stops_at_rungs("tuning.ray.asha", list(stops.values()),
                                                                 asha.rungs(), STEPS))
    fifo = stopped_at(None, tmp_path / "fifo")  # planted bug: the scheduler dropped, nothing stops early
    assert fifo[HOPELESS] == STEPS
    found = {c.name: c for c in conformance.asha_stops_at_rungs("tuning.ray.asha", list(fifo.values()),
                                                                asha.rungs(), STEPS)}
    assert not found["tuning.ray.asha.stopped_early"].passed
