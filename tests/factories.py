"""Build records for compare/gate/report tests without running anything."""

from __future__ import annotations

import numpy as np

from suite import stats
from suite.schema import Check, Environment, Git, Metric, Record, RunHost, Status


def environment(machine: str = "machine-a") -> Environment:
    return Environment(machine_id=machine, hostname="host", cpu_model="cpu", cpu_cores=2, ram_bytes=2**34,
                       python="3.11.7", platform="linux", packages={"torch": "2.13.0"},
                       threads={"torch_intra_op": 2}, seed=0)


def run_host(index: int, oversubscribed: bool = False) -> RunHost:
    return RunHost(index=index, status=Status.ok, duration_s=1.0, threads=1, cpus=[0], load_before=[0.1] * 3,
                   load_after=[0.1] * 3, runqueue_wait_fraction=0.5 if oversubscribed else 0.0,
                   oversubscribed=oversubscribed)


def replicated(runs: list[np.ndarray | list[float]], name: str = "step_time") -> list[Metric]:
    """Step time and throughput of several process runs, combined as the runner does."""
    steps = [stats.summarize(name, "s", False, samples) for samples in runs]
    rates = [stats.throughput("throughput", "samples/s", 64, samples) for samples in runs]
    return [stats.combine_runs(steps), stats.combine_runs(rates)]


def record(samples: np.ndarray | list[float] | list[np.ndarray], *, scenario: str = "fam.tech",
           machine: str = "machine-a", status: Status = Status.ok, checks: list[Check] | None = None,
           extra_metrics: list | None = None, source: str = "s" * 16,
           oversubscribed: list[bool] | None = None) -> Record:
    """One record; `samples` is one run's samples, or a list of runs' samples."""
    runs = samples if isinstance(samples, list) and samples and not np.isscalar(samples[0]) else [samples]
    flags = oversubscribed or [False] * len(runs)
    return Record(run_id="run", time_utc="2026-11-26T00:00:00+00:00", suite_version="0.1.0", profile="quick",
                  git=Git(commit="abc", dirty=False), env=environment(machine), scenario=scenario,
                  params={"model": "mlp"}, config_hash="h" * 16, source_hash=source, status=status,
                  duration_s=1.0, metrics=[*replicated(runs), *(extra_metrics or [])], checks=checks or [],
                  runs=[run_host(i, bad) for i, bad in enumerate(flags)])


def timings(median: float, seed: int, n: int = 200, spread: float = 0.03) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median), spread, n)


def runs_of(median: float, seed: int, runs: int = 5, between: float = 0.01, n: int = 100) -> list[np.ndarray]:
    """Several process runs: each run's median drifts by `between` (log sd) around `median`."""
    rng = np.random.default_rng(seed)
    return [timings(float(median * np.exp(rng.normal(0, between))), seed * 100 + i, n) for i in range(runs)]
