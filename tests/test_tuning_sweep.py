"""W&B sweep configs run locally through Optuna: the promised number of trials, values
inside the declared distributions, each grid point once, early termination and target."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from reference.tuning import conformance, objectives, sweep  # noqa: E402
from reference.tuning.space import Float  # noqa: E402

BRANIN_RANDOM = {"method": "random", "run_cap": 8, "metric": {"name": "value", "goal": "minimize"},
                 "parameters": {"x1": {"distribution": "q_uniform", "min": -5, "max": 10, "q": 0.5},
                                "x2": {"distribution": "uniform", "min": 0, "max": 15}}}
BRANIN_GRID = {"method": "grid", "metric": {"name": "value", "goal": "minimize"},
               "parameters": {"x1": {"values": [-3.0, 3.14, 9.42]}, "x2": {"values": [2.275, 12.0]}}}


def conforms(parsed: sweep.Sweep, run: sweep.SweepRun) -> list:
    return conformance.sweep_conforms(f"tuning.sweep.{parsed.method}", parsed.space, parsed.method,
                                      [p for p, _ in run.trials], parsed.trial_count())


@pytest.mark.parametrize("config", [BRANIN_RANDOM, BRANIN_GRID, {**BRANIN_RANDOM, "method": "bayes"}])
def test_a_sweep_runs_its_trials_inside_its_space(config: dict) -> None:
    parsed = sweep.parse(config)
    run = sweep.run_sweep(parsed, objectives.branin(), seed=0)
    found = conforms(parsed, run)
    assert all(c.passed for c in found), found
    params, value = run.best()
    assert value == min(v for _, v in run.trials if v is not None) and set(params) == {"x1", "x2"}


def test_grid_sweep_visits_every_point_once() -> None:
    parsed = sweep.parse(BRANIN_GRID)
    run = sweep.run_sweep(parsed, objectives.branin(), seed=0)
    assert sorted((p["x1"], p["x2"]) for p, _ in run.trials) == sorted(
        (x1, x2) for x1 in (-3.0, 3.14, 9.42) for x2 in (2.275, 12.0))


@pytest.mark.breaks("tuning.sweep.<method>.values_in_space")
def test_space_check_catches_a_translation_that_drops_q() -> None:
    """Planted bug: q_uniform translated without its step, so values leave the grid of q."""
    parsed = sweep.parse(BRANIN_RANDOM)
    dropped_q = dataclasses.replace(parsed, space={**parsed.space, "x1": Float(-5.0, 10.0)})
    run = sweep.run_sweep(dropped_q, objectives.branin(), seed=0)
    found = {c.name: c for c in conforms(parsed, run)}
    check = found["tuning.sweep.random.values_in_space"]
    assert not check.passed and "x1=" in check.detail


@pytest.mark.breaks("tuning.sweep.<method>.grid_points_once")
def test_grid_check_catches_random_sampling_of_the_grid_values() -> None:
    """Planted bug: a grid sweep run with the random sampler over the same values."""
    parsed = sweep.parse(BRANIN_GRID)
    as_random = dataclasses.replace(parsed, method="random", run_cap=parsed.trial_count())
    run = sweep.run_sweep(as_random, objectives.branin(), seed=0)
    found = {c.name: c for c in conforms(parsed, run)}
    assert not found["tuning.sweep.grid.grid_points_once"].passed


def test_hyperband_early_termination_stops_trials_and_target_stops_the_sweep() -> None:
    curve = {"method": "random", "run_cap": 12, "metric": {"name": "value", "goal": "maximize"},
             "parameters": {"quality": {"min": 0.0, "max": 1.0}},
             "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}}
    run = sweep.run_sweep(sweep.parse(curve), objectives.learning_curve(), seed=0)
    assert len(run.trials) == 12 and any(v is None for _, v in run.trials)  # some were stopped early
    targeted = sweep.parse({**curve, "metric": {"name": "value", "goal": "maximize", "target": 0.5}})
    run = sweep.run_sweep(targeted, objectives.learning_curve(), seed=0)
    assert run.best()[1] >= 0.5 and len(run.trials) < 12  # stopped at the first trial to reach it
    assert run.trials[-1][1] is not None and run.trials[-1][1] >= 0.5


@pytest.mark.breaks("tuning.sweep.<method>.trial_count")
def test_trial_count_check_catches_a_sweep_that_ignores_run_cap() -> None:
    """Planted bug: run_cap dropped on the way to the backend (the backend's default of 4 trials)."""
    parsed = sweep.parse(BRANIN_RANDOM)
    run = sweep.run_sweep(dataclasses.replace(parsed, run_cap=4), objectives.branin(), seed=0)
    found = {c.name: c for c in conforms(parsed, run)}
    assert not found["tuning.sweep.random.trial_count"].passed


def test_backend_arguments_are_checked(tmp_path: Path) -> None:
    parsed = sweep.parse(BRANIN_RANDOM)
    with pytest.raises(ValueError, match="unknown backend"):
        sweep.run_sweep(parsed, objectives.branin(), backend="hyperopt")
    with pytest.raises(ValueError, match="storage_dir"):
        sweep.run_sweep(parsed, objectives.branin(), backend="ray")
    with pytest.raises(RuntimeError, match="no trial"):
        sweep.SweepRun("optuna", "minimize", [({}, None)]).best()
