"""One search-space description that drives Optuna, Ray Tune and W&B sweep configs alike,
so a space is written once and every backend samples exactly the same distributions."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Float needs low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform Float needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a Float cannot be both log-uniform and stepped")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"Float step must be positive, got {self.step}")

    def contains(self, value: Any) -> bool:
        if not isinstance(value, int | float) or not self.low <= value <= self.high:
            return False
        return self.step is None or _on_grid(value - self.low, self.step)


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Int needs low <= high, got [{self.low}, {self.high}]")
        if self.step < 1:
            raise ValueError(f"Int step must be >= 1, got {self.step}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log-uniform Int needs low >= 1 and step 1")
        if (self.high - self.low) % self.step:
            raise ValueError(f"Int range [{self.low}, {self.high}] is not a multiple of step {self.step}")

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and self.low <= value <= self.high and (value - self.low) % self.step == 0)

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("Categorical needs at least one choice")

    def contains(self, value: Any) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Constant:
    value: Any

    def contains(self, value: Any) -> bool:
        return bool(value == self.value)


Dimension = Float | Int | Categorical | Constant
Space = dict[str, Dimension]


def _on_grid(offset: float, step: float) -> bool:
    ratio = offset / step
    return math.isclose(ratio, round(ratio), abs_tol=1e-9)


def outside(space: Space, params: dict[str, Any]) -> list[str]:
    """Names of params missing from the space, absent, or outside their distribution."""
    problems = [f"{name} missing" for name in space if name not in params]
    problems += [f"{name} not in the space" for name in params if name not in space]
    problems += [f"{name}={params[name]!r} outside {dim}" for name, dim in space.items()
                 if name in params and not dim.contains(params[name])]
    return problems


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Sample every dimension through an Optuna trial (define-by-run)."""
    params: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, Float):
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
        elif isinstance(dim, Int):
            params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
        elif isinstance(dim, Categorical):
            params[name] = trial.suggest_categorical(name, list(dim.choices))
        else:
            params[name] = dim.value
    return params


def grid_values(dim: Dimension) -> list[Any]:
    """The finite set of values of a discrete dimension (grid search), or a ValueError."""
    if isinstance(dim, Categorical):
        return list(dim.choices)
    if isinstance(dim, Constant):
        return [dim.value]
    if isinstance(dim, Int):
        return dim.values()
    if dim.step is not None:
        count = int(round((dim.high - dim.low) / dim.step))
        return [dim.low + i * dim.step for i in range(count + 1) if dim.low + i * dim.step <= dim.high + 1e-12]
    raise ValueError(f"grid search needs discrete dimensions; {dim} is continuous")


def grid(space: Space) -> list[dict[str, Any]]:
    """Every point of the cartesian product of a discrete space."""
    names = list(space)
    axes = [grid_values(space[name]) for name in names]
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*axes)]


def to_ray(space: Space, as_grid: bool = False) -> dict[str, Any]:
    """The same space as a Ray Tune `param_space` (a grid of `tune.grid_search` when as_grid)."""
    from ray import tune

    converted: dict[str, Any] = {}
    for name, dim in space.items():
        if as_grid:
            converted[name] = tune.grid_search(grid_values(dim))
        elif isinstance(dim, Float):
            converted[name] = (tune.loguniform(dim.low, dim.high) if dim.log
                               else tune.quniform(dim.low, dim.high, dim.step) if dim.step is not None
                               else tune.uniform(dim.low, dim.high))
        elif isinstance(dim, Int):
            # Ray's randint/lograndint exclude the upper bound; qrandint includes it for q > 1.
            converted[name] = (tune.lograndint(dim.low, dim.high + 1) if dim.log
                               else tune.qrandint(dim.low, dim.high, dim.step) if dim.step > 1
                               else tune.randint(dim.low, dim.high + 1))
        elif isinstance(dim, Categorical):
            converted[name] = tune.choice(list(dim.choices))
        else:
            converted[name] = dim.value
    return converted
