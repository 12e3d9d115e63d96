"""Ray Tune: the same objectives and search spaces under ASHA, on a private local Ray
cluster that this code starts with a bounded number of CPUs and always stops.

A Ray cluster outliving its caller (raylet, GCS, workers) is a classic leak in CI; the
cluster context manager shuts Ray down and then reaps anything still running from its own
session directory, and says how many it had to reap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from reference.tuning.objectives import Objective
from reference.tuning.space import to_ray

REAP_WAIT_S = 10.0


@dataclass(frozen=True)
class Asha:
    """ASHA's promise: a trial is only ever stopped at a rung, grace_period * rf**k, or at max_t."""

    max_t: int
    grace_period: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.grace_period <= self.max_t or self.reduction_factor < 2:
            raise ValueError(f"invalid ASHA settings {self}: need 0 < grace_period <= max_t, reduction_factor >= 2")

    def rungs(self) -> list[int]:
        milestones, rung = {self.max_t}, self.grace_period
        while rung < self.max_t:
            milestones.add(rung)
            rung *= self.reduction_factor
        return sorted(milestones)

    def scheduler(self) -> Any:
        """The Ray scheduler; the Tuner supplies metric and mode."""
        return ASHAScheduler(time_attr="training_iteration", max_t=self.max_t,
                             grace_period=self.grace_period, reduction_factor=self.reduction_factor)


@dataclass
class Cluster:
    num_cpus: int
    session_root: Path
    start_s: float = 0.0
    reaped: int = 0  # processes still alive after ray.shutdown() that had to be killed


def _session_processes(session_root: Path) -> list[Any]:
    """Processes whose command line names this cluster's private temp dir (ours only)."""
    marker = str(session_root)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _reap(session_root: Path) -> int:
    leftovers = _session_processes(session_root)
    for process in leftovers:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(leftovers, timeout=REAP_WAIT_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=REAP_WAIT_S)
    return len(leftovers)


@contextmanager
def local_cluster(num_cpus: int, num_gpus: int = 0) -> Iterator[Cluster]:
    """A new local Ray cluster (never an existing one: address="local") with `num_cpus`
    CPUs and `num_gpus` GPUs, no dashboard and no usage reporting; stopped and reaped on exit."""
    if num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
    if ray.is_initialized():
        raise RuntimeError("this process is already connected to a Ray cluster; refusing to share it")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no network: do not report usage
    session_root = Path(tempfile.mkdtemp(prefix="mlsuite-ray-"))  # short: Ray's socket paths are length-limited
    cluster = Cluster(num_cpus=num_cpus, session_root=session_root)
    started = time.perf_counter()
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=str(session_root), log_to_driver=False, configure_logging=False)
        cluster.start_s = time.perf_counter() - started
        yield cluster
    finally:
        ray.shutdown()
        cluster.reaped = _reap(session_root)
        shutil.rmtree(session_root, ignore_errors=True)


@dataclass(frozen=True)
class RayTrial:
    config: dict[str, Any]
    curve: list[tuple[int, float]]  # (training_iteration, metric) per report
    started_at: float  # wall-clock time (time.time()) the trainable began
    finished_at: float  # wall-clock time of its last report
    node: str = ""  # the Ray node id it ran on

    @property
    def stopped_at(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    @property
    def value(self) -> float:
        return self.curve[-1][1]


@dataclass
class TuneOutcome:
    trials: list[RayTrial] = field(default_factory=list)
    started_at: float = 0.0
    wall_s: float = 0.0

    def best(self, mode: str) -> RayTrial:
        pick = max if mode == "max" else min
        return pick(self.trials, key=lambda t: t.value)


def _trainable(objective: Objective) -> Any:
    def train(config: dict[str, Any]) -> None:
        objective.prepare()  # a fresh Ray worker loads data once; that is Ray's cost, not the trial's
        started, reported = time.time(), [False]
        node = ray.get_runtime_context().get_node_id()  # where the trial ran (on a cluster)

        def report(step: int, value: float) -> None:
            reported[0] = True
            tune.report({objective.metric: value, "step": step, "wall": time.time(), "started": started, "node": node})

        value = objective.fn(config, report)
        if not reported[0]:  # objectives without intermediate values report once, at the end
            tune.report({objective.metric: value, "step": 1, "wall": time.time(), "started": started, "node": node})

    return train


def mode_of(objective: Objective) -> str:
    return "max" if objective.direction == "maximize" else "min"


class TargetStopper(tune.Stopper):
    """Stops the whole experiment once any trial reaches the target value (a sweep's
    metric.target)."""

    def __init__(self, target: float, mode: str, metric: str) -> None:
        self.target, self.mode, self.metric, self.reached = target, mode, metric, False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.metric)
        if value is not None and (value >= self.target if self.mode == "max" else value <= self.target):
            self.reached = True
        return False

    def stop_all(self) -> bool:
        return self.reached


def run_tune(objective: Objective, *, num_samples: int, storage_dir: Path, seed: int,
             scheduler: Any = None, search_alg: Any = None, param_space: dict[str, Any] | None = None,
             cpus_per_trial: int = 1, gpus_per_trial: float = 0.0, max_concurrent: int = 0,
             stop: Any = None) -> TuneOutcome:
    """Run a Ray Tune experiment on the connected cluster. Without a search algorithm,
    seeded random search (BasicVariantGenerator) over the objective's space. A fractional
    gpus_per_trial packs several trials onto one GPU."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    tuner = tune.Tuner(
        tune.with_resources(_trainable(objective), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space=param_space if param_space is not None else to_ray(objective.space),
        tune_config=tune.TuneConfig(
            metric=objective.metric, mode=mode_of(objective), num_samples=num_samples,
            scheduler=scheduler, search_alg=search_alg or BasicVariantGenerator(random_state=seed),
            max_concurrent_trials=max_concurrent or None, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage_dir), name="tune", verbose=0, stop=stop),
    )
    outcome = TuneOutcome(started_at=time.time())
    results = tuner.fit()
    outcome.wall_s = time.time() - outcome.started_at
    for index in range(len(results)):
        result = results[index]
        frame, config = result.metrics_dataframe, result.config
        if result.error is not None or frame is None or config is None:
            raise RuntimeError(f"a Ray Tune trial failed: {result.error or 'it reported nothing'}")
        curve = [(int(i), float(v)) for i, v in zip(frame["training_iteration"], frame[objective.metric], strict=True)]
        outcome.trials.append(RayTrial(config=dict(config), curve=curve,
                                       started_at=float(frame["started"].iloc[0]),
                                       finished_at=float(frame["wall"].iloc[-1]), node=str(frame["node"].iloc[0])))
    return outcome
