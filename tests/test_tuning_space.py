"""The shared search space and W&B sweep-config parsing: every distribution maps as W&B
defines it, and anything unsupported is refused with an error naming it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("yaml")

from reference.tuning import objectives, sweep  # noqa: E402
from reference.tuning.space import Categorical, Constant, Float, Int, grid, grid_values, outside  # noqa: E402
from reference.tuning.sweep import SweepConfigError  # noqa: E402

SWEEPS = Path(__file__).resolve().parent.parent / "reference" / "tuning" / "sweeps"


def config(**overrides):  # type: ignore[no-untyped-def]
    base = {"method": "random", "run_cap": 4, "metric": {"name": "value", "goal": "minimize"},
            "parameters": {"x1": {"min": -5.0, "max": 10.0}, "x2": {"min": 0.0, "max": 15.0}}}
    return {**base, **overrides}


@pytest.mark.parametrize("bad", [lambda: Float(1.0, 1.0), lambda: Float(0.0, 1.0, log=True),
                                 lambda: Float(1.0, 2.0, log=True, step=0.5), lambda: Int(0, 10, step=3),
                                 lambda: Int(5, 1), lambda: Categorical(())])
def test_invalid_dimensions_are_refused(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        bad()


def test_contains_respects_bounds_steps_and_types() -> None:
    assert Float(0.0, 1.0, step=0.25).contains(0.75) and not Float(0.0, 1.0, step=0.25).contains(0.7)
    assert Int(32, 256, step=32).contains(96) and not Int(32, 256, step=32).contains(100)
    assert not Int(0, 10).contains(True) and not Int(0, 10).contains(2.0)
    assert Categorical((16, 32)).contains(32) and not Categorical((16, 32)).contains(64)
    assert outside({"a": Int(0, 3)}, {"a": 4, "b": 1}) == [
        "b not in the space", "a=4 outside Int(low=0, high=3, step=1, log=False)"]


def test_grid_is_the_cartesian_product() -> None:
    points = grid({"a": Categorical(("x", "y")), "b": Int(1, 3), "c": Constant(7), "d": Float(0.0, 1.0, step=0.5)})
    assert len(points) == 2 * 3 * 1 * 3
    assert {"a": "y", "b": 2, "c": 7, "d": 0.5} in points
    with pytest.raises(ValueError, match="continuous"):
        grid_values(Float(0.0, 1.0))


def test_every_supported_distribution_maps_as_wandb_defines_it() -> None:
    parsed = sweep.parse(config(parameters={
        "const": {"value": "adam"},
        "choice": {"values": [16, 32]},
        "ints": {"min": 1, "max": 8},
        "floats": {"min": 0.0, "max": 1},
        "q": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
        "exponents": {"distribution": "log_uniform", "min": -9.21, "max": -2.3},
        "values": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
    }))
    space = parsed.space
    assert space["const"] == Constant("adam") and space["choice"] == Categorical((16, 32))
    assert space["ints"] == Int(1, 8) and space["floats"] == Float(0.0, 1.0)
    assert space["q"] == Float(0.0, 1.0, step=0.25)
    assert space["exponents"].log and math.isclose(space["exponents"].low, math.exp(-9.21))
    assert space["values"] == Float(1e-4, 1e-1, log=True)
    assert parsed.goal == "minimize" and parsed.trial_count() == 4


@pytest.mark.parametrize(("overrides", "message"), [
    ({"program": "train.py"}, "hosted controller"),
    ({"command": ["python"]}, "hosted controller"),
    ({"controller": {"type": "local"}}, "hosted controller"),
    ({"imports": 1}, "unsupported sweep keys"),
    ({"method": "hyperopt"}, "method must be one of"),
    ({"metric": {"name": "value", "goal": "lower"}}, "goal must be"),
    ({"metric": {"name": "value", "impute": 0}}, "unsupported metric keys"),
    ({"method": "bayes", "metric": None}, "needs a metric"),
    ({"run_cap": None}, "needs run_cap"),
    ({"run_cap": 0}, "positive integer"),
    ({"parameters": {}}, "non-empty mapping"),
    ({"parameters": {"x": {"distribution": "normal", "mu": 0, "sigma": 1}}}, "unsupported keys"),
    ({"parameters": {"x": {"distribution": "normal", "min": 0, "max": 1}}}, "normal is not supported"),
    ({"parameters": {"x": {"distribution": "inv_log_uniform", "min": 0, "max": 1}}}, "not supported"),
    ({"parameters": {"x": {"values": [1, 2], "probabilities": [0.5, 0.5]}}}, "probabilities"),
    ({"parameters": {"x": {"parameters": {"y": {"value": 1}}}}}, "nested parameters"),
    ({"parameters": {"x": {"min": 1}}}, "give value, values, or min and max"),
    ({"parameters": {"x": {"distribution": "uniform", "min": 2.0, "max": 1.0}}}, "low < high"),
    ({"parameters": {"x": {"distribution": "int_uniform", "min": 0.5, "max": 3}}}, "integer min and max"),
    ({"parameters": {"x": {"distribution": "uniform", "min": "a", "max": 1.0}}}, "must be a number"),
    ({"parameters": {"x": {"distribution": "zipf", "min": 0, "max": 1}}}, "unknown distribution"),
    ({"method": "grid", "run_cap": None}, "grid search needs discrete parameters; x1 is continuous"),
    ({"early_terminate": {"type": "envelope"}}, "only {type: hyperband"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 9}}, "unsupported early_terminate keys"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 0}}, "min_iter >= 1"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1}}, "eta must be an integer >= 2"),
])
def test_unsupported_or_invalid_configs_get_a_clear_error(overrides, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SweepConfigError, match=message):
        sweep.parse(config(**overrides))


def test_the_shipped_sweep_configs_parse(tmp_path: Path) -> None:
    parsed = {path.stem: sweep.load(path) for path in sorted(SWEEPS.glob("*.yaml"))}
    assert set(parsed) == {"digits-random", "digits-grid", "digits-bayes"}
    assert parsed["digits-grid"].trial_count() == len(grid(parsed["digits-grid"].space)) == 12
    assert parsed["digits-bayes"].early_terminate == sweep.Hyperband(min_iter=1, eta=2)
    for item in parsed.values():
        sweep.bind(item, objectives.digits_objective())  # names and metric match the objective
    (tmp_path / "s.txt").write_text("method: random")
    with pytest.raises(SweepConfigError, match="yaml, .yml or .json"):
        sweep.load(tmp_path / "s.txt")
    (tmp_path / "s.json").write_text("[1, 2]")
    with pytest.raises(SweepConfigError, match="mapping at the top level"):
        sweep.load(tmp_path / "s.json")


def test_a_sweep_must_match_its_objective() -> None:
    with pytest.raises(SweepConfigError, match="optimises 'loss'"):
        sweep.bind(sweep.parse(config(metric={"name": "loss"})), objectives.branin())
    with pytest.raises(SweepConfigError, match="parameters"):
        sweep.bind(sweep.parse(config(parameters={"x1": {"min": 0.0, "max": 1.0}})), objectives.branin())
    hyperband = {"type": "hyperband", "min_iter": 1}
    with pytest.raises(SweepConfigError, match="intermediate values"):
        sweep.bind(sweep.parse(config(early_terminate=hyperband)), objectives.branin())


def test_ray_space_samples_stay_inside_the_declared_bounds() -> None:
    """Ray's randint excludes its upper bound, qrandint includes it: the conversion must
    land every sample inside the space (and reach both ends of an integer range)."""
    pytest.importorskip("ray")
    import numpy as np

    from reference.tuning.space import to_ray

    space = {"hidden": Int(32, 256, step=32), "layers": Int(1, 3), "width": Int(1, 8, log=True),
             "lr": Float(1e-4, 1e-1, log=True), "q": Float(0.0, 1.0, step=0.25), "p": Float(0.0, 0.5),
             "bs": Categorical((16, 32)), "c": Constant("x")}
    converted = to_ray(space)
    np.random.seed(0)
    for name, dim in space.items():
        if isinstance(dim, Constant):
            assert converted[name] == "x"
            continue
        samples = [converted[name].sample() for _ in range(300)]
        assert all(dim.contains(s if not isinstance(dim, Int) else int(s)) for s in samples), name
        if isinstance(dim, Int) and not dim.log:
            assert {dim.low, dim.high} <= {int(s) for s in samples}, name
    assert to_ray({"b": Categorical((1, 2))}, as_grid=True) == {"b": {"grid_search": [1, 2]}}
