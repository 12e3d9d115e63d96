"""W&B sweep configurations, run locally. W&B's sweep controller is a hosted service; this
accepts the same configuration format (method, metric, parameters, early_terminate,
run_cap) and runs it through Optuna or Ray Tune on this machine.

Mapping: random -> random search; grid -> the full cartesian product (discrete parameters
only); bayes -> TPE (W&B uses a Gaussian process; TPE is Optuna's model-based default).
early_terminate hyperband -> asynchronous successive halving at W&B's brackets
min_iter * eta**k (Optuna's SuccessiveHalvingPruner, Ray Tune's ASHAScheduler).
Anything else is refused with an error that names the key, never silently ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reference.tuning.objectives import Direction, Objective
from reference.tuning.space import Categorical, Constant, Dimension, Float, Int, Space, grid, grid_values

METHODS = ("random", "grid", "bayes")
SUPPORTED_KEYS = {"method", "metric", "parameters", "name", "description", "run_cap", "early_terminate"}
HOSTED_KEYS = {"program", "command", "entity", "project", "controller", "job", "image_uri"}
UNSUPPORTED_DISTRIBUTIONS = {
    "q_log_uniform", "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values",
    "normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta",
}
PARAMETER_KEYS = {"distribution", "value", "values", "min", "max", "q"}
EARLY_TERMINATE_KEYS = {"type", "min_iter", "eta"}


class SweepConfigError(ValueError):
    """The sweep configuration asks for something this local runner cannot do."""


@dataclass(frozen=True)
class Hyperband:
    """Stop a run at a bracket min_iter * eta**k unless it is in the top 1/eta there."""

    min_iter: int
    eta: int


@dataclass(frozen=True)
class Sweep:
    method: str
    metric: str
    goal: Direction
    space: Space
    run_cap: int | None = None
    target: float | None = None
    early_terminate: Hyperband | None = None
    name: str = ""

    @property
    def direction(self) -> str:
        return self.goal

    def trial_count(self) -> int:
        """Trials a run of this sweep makes: the grid size for grid (capped by run_cap),
        run_cap otherwise."""
        if self.method == "grid":
            size = len(grid(self.space))
            return min(size, self.run_cap) if self.run_cap else size
        if self.run_cap is None:
            raise SweepConfigError(f"method {self.method} needs run_cap: a local sweep must know when to stop")
        return self.run_cap


def load(source: Mapping[str, Any] | str | Path) -> Sweep:
    """Parse a sweep config from a dict, or a .yaml/.yml/.json file."""
    if isinstance(source, str | Path):
        path = Path(source)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            config = yaml.safe_load(text)
        elif path.suffix == ".json":
            config = json.loads(text)
        else:
            raise SweepConfigError(f"{path}: a sweep config is a .yaml, .yml or .json file")
        if not isinstance(config, Mapping):
            raise SweepConfigError(f"{path}: a sweep config must be a mapping at the top level")
        return parse(config)
    return parse(source)


def parse(config: Mapping[str, Any]) -> Sweep:
    hosted = sorted(HOSTED_KEYS & set(config))
    if hosted:
        raise SweepConfigError(f"sweep keys {hosted} need W&B's hosted controller and agent; "
                               f"run locally, the objective is called directly")
    unknown = sorted(set(config) - SUPPORTED_KEYS)
    if unknown:
        raise SweepConfigError(f"unsupported sweep keys {unknown}; supported: {sorted(SUPPORTED_KEYS)}")
    method = config.get("method")
    if method not in METHODS:
        raise SweepConfigError(f"method must be one of {list(METHODS)}, got {method!r}")
    metric, goal, target = _metric(config.get("metric"), method)
    parameters = config.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        raise SweepConfigError("parameters must be a non-empty mapping of name -> specification")
    space = {str(name): _dimension(str(name), spec) for name, spec in parameters.items()}
    if method == "grid":
        for name, dim in space.items():
            try:
                grid_values(dim)
            except ValueError:
                raise SweepConfigError(f"grid search needs discrete parameters; {name} is continuous "
                                       f"(give values, or int_uniform / q_uniform)") from None
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise SweepConfigError(f"run_cap must be a positive integer, got {run_cap!r}")
    sweep = Sweep(method=method, metric=metric, goal=goal, space=space, run_cap=run_cap, target=target,
                  early_terminate=_early_terminate(config.get("early_terminate")), name=str(config.get("name", "")))
    sweep.trial_count()  # refuses an unbounded random/bayes sweep now, not after it starts
    return sweep


def _metric(spec: Any, method: str) -> tuple[str, Direction, float | None]:
    if spec is None:
        raise SweepConfigError(f"method {method} needs a metric (name and goal) to know what is best")
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise SweepConfigError("metric must be a mapping with a name (and optionally goal, target)")
    unknown = sorted(set(spec) - {"name", "goal", "target"})
    if unknown:
        raise SweepConfigError(f"unsupported metric keys {unknown}; supported: name, goal, target")
    goal = spec.get("goal", "minimize")  # W&B's default
    if goal not in ("minimize", "maximize"):
        raise SweepConfigError(f"metric goal must be minimize or maximize, got {goal!r}")
    target = spec.get("target")
    if target is not None and not isinstance(target, int | float):
        raise SweepConfigError(f"metric target must be a number, got {target!r}")
    return str(spec["name"]), goal, None if target is None else float(target)


def _number(name: str, spec: Mapping[str, Any], key: str) -> float:
    if key not in spec:
        raise SweepConfigError(f"parameter {name}: needs {key}")
    value = spec[key]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SweepConfigError(f"parameter {name}: {key} must be a number, got {value!r}")
    return value


def _dimension(name: str, spec: Any) -> Dimension:
    if not isinstance(spec, Mapping):
        raise SweepConfigError(f"parameter {name}: the specification must be a mapping, got {spec!r}")
    if "parameters" in spec:
        raise SweepConfigError(f"parameter {name}: nested parameters are not supported; flatten them")
    unknown = sorted(set(spec) - PARAMETER_KEYS)
    if unknown:
        raise SweepConfigError(f"parameter {name}: unsupported keys {unknown} "
                               f"(supported: {sorted(PARAMETER_KEYS)}; probabilities and "
                               f"normal-family distributions are not)")
    distribution = spec.get("distribution") or _inferred_distribution(name, spec)
    if distribution in UNSUPPORTED_DISTRIBUTIONS:
        raise SweepConfigError(f"parameter {name}: distribution {distribution} is not supported; use one of "
                               f"constant, categorical, int_uniform, uniform, q_uniform, log_uniform, "
                               f"log_uniform_values")
    try:
        return _build(name, distribution, spec)
    except ValueError as exc:
        if isinstance(exc, SweepConfigError):
            raise
        raise SweepConfigError(f"parameter {name}: {exc}") from None


def _inferred_distribution(name: str, spec: Mapping[str, Any]) -> str:
    """W&B's defaults: value -> constant, values -> categorical, int min/max -> int_uniform,
    other min/max -> uniform."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    raise SweepConfigError(f"parameter {name}: give value, values, or min and max")


def _build(name: str, distribution: str, spec: Mapping[str, Any]) -> Dimension:
    if distribution == "constant":
        if "value" not in spec:
            raise SweepConfigError(f"parameter {name}: constant needs value")
        return Constant(spec["value"])
    if distribution == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"parameter {name}: categorical needs a non-empty list of values")
        return Categorical(tuple(values))
    low, high = _number(name, spec, "min"), _number(name, spec, "max")
    if distribution == "int_uniform":
        if not (isinstance(low, int) and isinstance(high, int)):
            raise SweepConfigError(f"parameter {name}: int_uniform needs integer min and max")
        return Int(low, high)
    if distribution == "uniform":
        return Float(float(low), float(high))
    if distribution == "q_uniform":
        return Float(float(low), float(high), step=float(spec.get("q", 1.0)))
    if distribution == "log_uniform":  # W&B: min and max are natural-log exponents
        return Float(math.exp(low), math.exp(high), log=True)
    if distribution == "log_uniform_values":
        return Float(float(low), float(high), log=True)
    raise SweepConfigError(f"parameter {name}: unknown distribution {distribution!r}")


def _early_terminate(spec: Any) -> Hyperband | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or spec.get("type") != "hyperband":
        raise SweepConfigError("early_terminate supports only {type: hyperband, min_iter, eta}")
    unknown = sorted(set(spec) - EARLY_TERMINATE_KEYS)
    if unknown:
        raise SweepConfigError(f"unsupported early_terminate keys {unknown}; supported: "
                               f"{sorted(EARLY_TERMINATE_KEYS)} (brackets are min_iter * eta**k up to "
                               f"the objective's own number of steps)")
    min_iter, eta = spec.get("min_iter"), spec.get("eta", 3)
    if not isinstance(min_iter, int) or isinstance(min_iter, bool) or min_iter < 1:
        raise SweepConfigError("early_terminate hyperband needs an integer min_iter >= 1")
    if not isinstance(eta, int) or isinstance(eta, bool) or eta < 2:
        raise SweepConfigError(f"early_terminate eta must be an integer >= 2, got {eta!r}")
    return Hyperband(min_iter=min_iter, eta=eta)


# --- running a parsed sweep locally ------------------------------------------------------

BACKENDS = ("optuna", "ray")


@dataclass
class SweepRun:
    backend: str
    direction: str
    trials: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)  # None: pruned

    def best(self) -> tuple[dict[str, Any], float]:
        scored = [(p, v) for p, v in self.trials if v is not None]
        if not scored:
            raise RuntimeError("the sweep finished no trial")
        pick = min if self.direction == "minimize" else max
        return pick(scored, key=lambda pv: pv[1])


def bind(sweep: Sweep, objective: Objective) -> Objective:
    """The objective searched over the sweep's space, in the sweep's direction; refuses a
    sweep whose metric or parameters do not match what the objective reports and reads."""
    if sweep.metric != objective.metric:
        raise SweepConfigError(f"the sweep optimises {sweep.metric!r} but the {objective.name} objective "
                               f"reports {objective.metric!r}")
    if set(sweep.space) != set(objective.space):
        raise SweepConfigError(f"the sweep's parameters {sorted(sweep.space)} differ from the {objective.name} "
                               f"objective's {sorted(objective.space)}")
    if sweep.early_terminate is not None and objective.steps < 1:
        raise SweepConfigError(f"early_terminate needs intermediate values; {objective.name} reports none")
    return replace(objective, space=sweep.space, direction=sweep.goal)


def _reached(value: float | None, sweep: Sweep) -> bool:
    if value is None or sweep.target is None:
        return False
    return value <= sweep.target if sweep.goal == "minimize" else value >= sweep.target


def run_with_optuna(sweep: Sweep, objective: Objective, seed: int) -> SweepRun:
    import optuna

    from reference.tuning import studies

    bound = bind(sweep, objective)
    if sweep.method == "grid":
        searched = {name: grid_values(dim) for name, dim in sweep.space.items() if not isinstance(dim, Constant)}
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(searched, seed=seed)
    else:
        sampler = studies.make_sampler("tpe" if sweep.method == "bayes" else "random", seed)
    pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=sweep.early_terminate.min_iter,
                                                     reduction_factor=sweep.early_terminate.eta)
              if sweep.early_terminate else optuna.pruners.NopPruner())
    study = studies.create_study(bound, sampler=sampler, pruner=pruner)

    def stop_at_target(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _reached(trial.value, sweep):
            study.stop()

    study.optimize(studies.as_optuna(bound), n_trials=sweep.trial_count(), callbacks=[stop_at_target])
    run = SweepRun("optuna", sweep.goal)
    for trial in sorted(study.trials, key=lambda t: t.number):
        params = {name: trial.params.get(name, getattr(dim, "value", None)) for name, dim in sweep.space.items()}
        run.trials.append((params, trial.value if trial.state.name == "COMPLETE" else None))
    return run


def run_with_ray(sweep: Sweep, objective: Objective, seed: int, storage_dir: Path) -> SweepRun:
    """On the Ray cluster the caller has connected (see ray_tune.local_cluster)."""
    from ray.tune.search.optuna import OptunaSearch

    from reference.tuning import ray_tune, studies
    from reference.tuning.space import to_ray

    bound = bind(sweep, objective)
    if sweep.method == "grid" and sweep.trial_count() < len(grid(sweep.space)):
        raise SweepConfigError("with the ray backend a grid sweep runs the whole grid; drop run_cap "
                               "or use the optuna backend")
    scheduler = (ray_tune.Asha(max_t=bound.steps, grace_period=sweep.early_terminate.min_iter,
                               reduction_factor=sweep.early_terminate.eta).scheduler()
                 if sweep.early_terminate else None)
    search = OptunaSearch(sampler=studies.make_sampler("tpe", seed)) if sweep.method == "bayes" else None
    outcome = ray_tune.run_tune(
        bound, num_samples=1 if sweep.method == "grid" else sweep.trial_count(), storage_dir=storage_dir,
        seed=seed, scheduler=scheduler, search_alg=search,
        param_space=to_ray(sweep.space, as_grid=sweep.method == "grid"),
        stop=ray_tune.TargetStopper(sweep.target, ray_tune.mode_of(bound), bound.metric)
        if sweep.target is not None else None)
    run = SweepRun("ray", sweep.goal)
    run.trials = [(trial.config, trial.value) for trial in outcome.trials]
    return run


def run_sweep(sweep: Sweep, objective: Objective, *, backend: str = "optuna", seed: int = 0,
              storage_dir: Path | None = None) -> SweepRun:
    if backend == "optuna":
        return run_with_optuna(sweep, objective, seed)
    if backend == "ray":
        if storage_dir is None:
            raise ValueError("the ray backend needs a storage_dir for its results")
        return run_with_ray(sweep, objective, seed, storage_dir)
    raise ValueError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
