"""Objectives to tune: Branin and Hartmann-6 (known optima, so regret is exact) and the real
digits task (the core's digits MLP with dropout, scored on a validation split carved from
the training split; the pinned eval split stays untouched for a final test score).

An objective is `fn(params, report) -> value`. `report(step, value)` hands an intermediate
value to whatever drives the search (Optuna's pruner, Ray Tune's scheduler); it may raise to
stop the trial. The same function therefore runs under every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np

from reference.tuning.space import Categorical, Float, Int, Space

Report = Callable[[int, float], None]
Direction = Literal["minimize", "maximize"]
ObjectiveFn = Callable[[dict[str, Any], Report], float]


@dataclass(frozen=True)
class Objective:
    name: str
    space: Space
    fn: ObjectiveFn
    direction: Direction
    metric: str  # what the value means, as sweep configs and trackers name it
    optimum: float  # the best attainable value: regret is measured from it
    steps: int = 0  # intermediate reports per trial (epochs); 0 when it reports none
    prepare: Callable[[], Any] = lambda: None  # load data once, outside any timed trial

    def regret(self, value: float) -> float:
        """Distance from the optimum in the objective's bad direction (never negative)."""
        gap = value - self.optimum if self.direction == "minimize" else self.optimum - value
        return max(gap, 0.0)


def _no_report(step: int, value: float) -> None:
    return None


# --- Branin: 2-D, three global minima of 0.397887 ---------------------------------------

BRANIN_OPTIMUM = 0.397887357729739


def branin_value(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def _branin(params: dict[str, Any], report: Report) -> float:
    return branin_value(params["x1"], params["x2"])


# --- Hartmann-6: 6-D on the unit cube, global minimum -3.32237 -------------------------

HARTMANN6_OPTIMUM = -3.322368011391339
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
HARTMANN6_ARGMIN = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)


def hartmann6_value(x: Sequence[float] | np.ndarray) -> float:
    point = np.asarray(x, dtype=float)
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (point - _H6_P) ** 2, axis=1))))


def _hartmann6(params: dict[str, Any], report: Report) -> float:
    return hartmann6_value([params[f"x{i}"] for i in range(6)])


# --- a learning curve: intermediate values at no cost, for scheduler and pruner tests ----


def _learning_curve(steps: int) -> ObjectiveFn:
    def fn(params: dict[str, Any], report: Report) -> float:
        value = 0.0
        for step in range(1, steps + 1):
            value = params["quality"] * step / steps  # better configs stay ahead at every step
            report(step, value)
        return value

    return fn


def learning_curve(steps: int = 9) -> Objective:
    """Maximise `quality` in [0, 1], seen through `steps` intermediate reports."""
    return Objective("learning_curve", {"quality": Float(0.0, 1.0)}, _learning_curve(steps), "maximize",
                     "value", 1.0, steps=steps)


# --- digits: the core's MLP with dropout, tuned on a validation split -------------------

DIGITS_LR = Float(1e-4, 1e-1, log=True)
DIGITS_SPACE: Space = {
    "lr": DIGITS_LR,
    "batch_size": Categorical((32, 64, 128, 256)),
    "dropout": Float(0.0, 0.5),
    "hidden": Int(32, 256, step=32),
}
VALIDATION_FRACTION = 0.2


@cache
def digits_tuning_data() -> tuple[Any, Any, Any, Any]:
    """(x_fit, y_fit, x_val, y_val): the pinned training split, cut by a fixed permutation."""
    import torch

    from reference.training.data import digits

    split = digits()
    order = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(0))
    n_val = int(len(order) * VALIDATION_FRACTION)
    fit, val = order[n_val:], order[:n_val]
    return split.x_train[fit], split.y_train[fit], split.x_train[val], split.y_train[val]


def digits_model(hidden: int, dropout: float, seed: int) -> Any:
    """reference.training.models.MLP with a Dropout after each hidden activation."""
    import torch
    from torch import nn

    from reference.training.models import MLP

    torch.manual_seed(seed)
    model = MLP(hidden)
    layers: list[nn.Module] = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, nn.ReLU):
            layers.append(nn.Dropout(dropout))
    model.layers = nn.Sequential(*layers)
    return model


def train_digits(params: dict[str, Any], report: Report, *, epochs: int, seed: int = 0,
                 threads: int = 1, device: str = "cpu") -> float:
    """Adam for `epochs` epochs; reports validation accuracy after each (step = epoch,
    from 1); returns the last one. Seeded: the same params give the same accuracy.

    Sets torch to `threads` intra-op threads: trials this small run fastest on one thread
    (on 2 shared cores, 2 threads were 15x slower), and tuning scales by running trials
    side by side instead."""
    import torch
    from torch import nn

    from reference.training.data import minibatches
    from reference.training.loop import correct_predictions, train_step

    torch.set_num_threads(threads)
    x_fit, y_fit, x_val, y_val = (t.to(device) for t in digits_tuning_data())
    model = digits_model(int(params["hidden"]), float(params["dropout"]), seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]))
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        for x, y in minibatches(x_fit, y_fit, int(params["batch_size"]), order):
            train_step(model, optimizer, loss_fn, x, y)
        accuracy = float(correct_predictions(model, x_val, y_val).float().mean())
        report(epoch, accuracy)
    return accuracy


def _digits(epochs: int, seed: int, device: str) -> ObjectiveFn:
    def fn(params: dict[str, Any], report: Report) -> float:
        return train_digits(params, report, epochs=epochs, seed=seed, device=device)

    return fn


def branin() -> Objective:
    return Objective("branin", {"x1": Float(-5.0, 10.0), "x2": Float(0.0, 15.0)}, _branin,
                     "minimize", "value", BRANIN_OPTIMUM)


def hartmann6() -> Objective:
    return Objective("hartmann6", {f"x{i}": Float(0.0, 1.0) for i in range(6)}, _hartmann6,
                     "minimize", "value", HARTMANN6_OPTIMUM)


def digits_objective(epochs: int = 5, seed: int = 0, space: Space | None = None, device: str = "cpu") -> Objective:
    """Validation accuracy (maximise); regret is the validation error rate."""
    return Objective("digits", space or DIGITS_SPACE, _digits(epochs, seed, device), "maximize",
                     "val_accuracy", 1.0, steps=epochs, prepare=digits_tuning_data)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "branin": branin, "hartmann6": hartmann6, "learning_curve": learning_curve, "digits": digits_objective,
}


def get(name: str, **options: Any) -> Objective:
    """An objective by name (worker processes rebuild theirs from a name and options)."""
    try:
        factory = OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}") from None
    return factory(**options)


def evaluate(objective: Objective, params: dict[str, Any]) -> float:
    """The objective at one point, without any intermediate reporting."""
    return objective.fn(params, _no_report)
