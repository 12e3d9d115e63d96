"""The host's evidence: CPU choice, cgroup quota, and oversubscription seen, not assumed."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from suite import host


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),
])
def test_cgroup_quota_in_cores(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert host.cgroup_cpus(tmp_path) == expected


def test_a_worker_gets_allowed_cpus_never_more_than_asked() -> None:
    allowed = set(host.affinity())
    chosen = host.choose_cpus()
    assert chosen and set(chosen) <= allowed and len(chosen) <= max(1, len(allowed) - 1)
    assert len(host.choose_cpus(1)) == 1


def _spin(cpu: int, seconds: float) -> None:
    os.sched_setaffinity(0, {cpu})
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_threads_waiting_for_a_cpu_are_seen_as_oversubscribed() -> None:
    """Two busy processes pinned to this process's only CPU: it must wait most of the time."""
    cpu = host.affinity()[0]
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    hogs = [multiprocessing.Process(target=_spin, args=(cpu, 3.0)) for _ in range(2)]
    try:
        for hog in hogs:
            hog.start()
        time.sleep(0.3)
        with host.Watch(threads=1) as watch:
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                pass
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
        os.sched_setaffinity(0, previous)
    assert watch.wait_fraction is not None and watch.wait_fraction > 0.3
    assert watch.oversubscribed and watch.cpu_per_wall is not None and watch.cpu_per_wall < 0.7


def test_steal_and_load_are_readable() -> None:
    steal = host.Steal()
    sum(range(100000))
    fraction = steal.fraction()
    assert fraction is None or 0.0 <= fraction <= 1.0
    assert len(host.load_average()) == 3
