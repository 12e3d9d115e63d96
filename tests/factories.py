"""Build records for compare/gate/report tests without running anything."""

from __future__ import annotations

import numpy as np

from suite import stats
from suite.schema import Check, Environment, Git, Record, Status


def environment(machine: str = "machine-a") -> Environment:
    return Environment(machine_id=machine, hostname="host", cpu_model="cpu", cpu_cores=2, ram_bytes=2**34,
                       python="3.11.7", platform="linux", packages={"torch": "2.13.0"},
                       threads={"torch_intra_op": 2}, seed=0)


def record(samples: np.ndarray | list[float], *, scenario: str = "fam.tech", machine: str = "machine-a",
           status: Status = Status.ok, checks: list[Check] | None = None, extra_metrics: list | None = None) -> Record:
    step = stats.summarize("step_time", "s", False, samples)
    rate = stats.throughput("throughput", "samples/s", 64, samples)
    return Record(run_id="run", time_utc="2026-11-26T00:00:00+00:00", suite_version="0.1.0", profile="quick",
                  git=Git(commit="abc", dirty=False), env=environment(machine), scenario=scenario,
                  params={"model": "mlp"}, config_hash="h" * 16, source_hash="s" * 16, status=status,
                  duration_s=1.0, metrics=[step, rate, *(extra_metrics or [])], checks=checks or [])


def timings(median: float, seed: int, n: int = 200, spread: float = 0.03) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median), spread, n)
