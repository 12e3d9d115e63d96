"""What the host is doing: the CPUs a worker may use, how busy they are, and the evidence
recorded with every run (load, affinity, cgroup quota, steal, governor, run-queue wait).

On a shared 2-core host, intra-op threads equal to the core count collapse (10-100x slower
steps) as soon as one other process is busy: OpenMP threads wait for each other. So a worker
gets the least busy CPUs, one fewer than are idle (a core is left to the neighbours), and
whether its threads still waited for a CPU is measured, not assumed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

BUSY_SAMPLE_S = 0.25  # how long /proc/stat is watched to find idle CPUs
IDLE_ENOUGH = 0.5  # a CPU at most half busy counts as free
OVERSUBSCRIBED_WAIT = 0.10  # threads that waited for a CPU >10% of the time were oversubscribed


def affinity() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in cores (v2 `cpu.max`, v1 `cfs_quota_us`), None if unlimited."""
    v2 = root / "cpu.max"
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota_us = int(v1.read_text())
            period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota_us < 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def governor() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_times() -> dict[str, list[int]]:
    """/proc/stat jiffies per line: 'cpu' (all) and 'cpuN'."""
    rows = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            rows[name] = [int(v) for v in values]
    return rows


def _busy(before: list[int], after: list[int]) -> float:
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])
    idle = delta[3] + delta[4]  # idle + iowait
    return 1.0 - idle / total if total else 0.0


def busy_by_cpu(seconds: float = BUSY_SAMPLE_S) -> dict[int, float]:
    """Fraction of time each allowed CPU was busy over a short window."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    return {cpu: _busy(before[f"cpu{cpu}"], after[f"cpu{cpu}"]) for cpu in affinity() if f"cpu{cpu}" in after}


def choose_cpus(threads: int = 0) -> list[int]:
    """The CPUs for a worker, least busy first. threads=0: as many as are free now, less one
    left to the neighbours (at least one), capped by the cgroup quota."""
    busy = busy_by_cpu()
    ranked = sorted(busy, key=lambda cpu: (busy[cpu], cpu))
    if threads <= 0:
        free = sum(1 for load in busy.values() if load <= IDLE_ENOUGH)
        threads = max(1, free - 1)
        quota = cgroup_cpus()
        if quota is not None:
            threads = max(1, min(threads, math.floor(quota)))
    return sorted(ranked[:threads])


class Steal:
    """Share of the host's CPU time stolen by the hypervisor over an interval."""

    def __init__(self) -> None:
        self.start = _cpu_times()["cpu"]

    def fraction(self) -> float | None:
        end = _cpu_times()["cpu"]
        delta = [b - a for a, b in zip(self.start, end)]
        total = sum(delta[:8])
        return delta[7] / total if total and len(delta) > 7 else None


def _runqueue_wait_ns() -> int:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Watch:
    """Brackets the measured part of a run: wall, process CPU and run-queue wait."""

    threads: int
    wall: float = 0.0
    cpu: float = 0.0
    wait_ns: int = 0

    def __enter__(self) -> Watch:
        self.wall, self.cpu, self.wait_ns = time.perf_counter(), time.process_time(), _runqueue_wait_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.wait_ns = _runqueue_wait_ns() - self.wait_ns

    @property
    def wait_fraction(self) -> float | None:
        return self.wait_ns / 1e9 / (self.wall * self.threads) if self.wall > 0 else None

    @property
    def cpu_per_wall(self) -> float | None:
        return self.cpu / self.wall if self.wall > 0 else None

    @property
    def oversubscribed(self) -> bool:
        return (self.wait_fraction or 0.0) > OVERSUBSCRIBED_WAIT
