"""Runs one scenario at one point of its grid, in a process of its own.

`python -m suite.worker JOB.json RESULT.json`, or `main` in a fork of the counting zygote
(suite.zygote) for a counted run. The runner owns the timeout and records a crash (no
result file) as `error`; everything this process can catch it reports itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import os
import random
import sys
import traceback
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

from reference.lifeline import die_with_parent
from suite import checks, host, instructions, leftovers, registry
from suite.context import RunContext
from suite.environment import thread_settings
from suite.profiles import Budget
from suite.schema import Check, Metric, Status

# The job format `mlsuite ab` relies on (cpus, replicate, conformance); bumped when it changes.
PROTOCOL = 2
TIMER_OVERHEAD_LIMIT = 0.01  # the timer may add at most 1% to the smallest timed step


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(module)` once `name` has been imported for the first time."""

    def __init__(self, name: str, then: Callable[[ModuleType], object]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then(module: ModuleType) -> None:
                exec_module(module)
                self.then(module)

            spec.loader.exec_module = exec_then  # type: ignore[method-assign]
        return spec


def when_imported(name: str, then: Callable[[ModuleType], object]) -> None:
    """`then(module)` now if `name` is imported, else right after its first import: torch
    is seeded and pinned without importing it into a worker that never uses it (its import
    is 15 s of a counted worker's startup under Valgrind)."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def _pin_threads_and_seed(threads: int, seed: int) -> None:
    random.seed(seed)
    when_imported("numpy", lambda np: np.random.seed(seed))
    when_imported("torch", lambda torch: (torch.manual_seed(seed), torch.set_num_threads(threads),
                                          torch.set_num_interop_threads(threads)))


def timer_overhead_check(metrics: list[Metric]) -> Check | None:
    """The harness checks its own clock on every record that has timed samples."""
    timed = [m for m in metrics if m.overhead is not None and m.median > 0]
    if not timed:
        return None
    smallest = min(timed, key=lambda m: m.median)
    assert smallest.overhead is not None
    return checks.at_most("harness.timer_overhead", smallest.overhead / smallest.median,
                          TIMER_OVERHEAD_LIMIT, "median timed step",
                          f"{smallest.overhead:.3g} s per call vs {smallest.name} "
                          f"median {smallest.median:.3g} s ({smallest.clock} clock)")


def _native_step_s(instance: registry.Scenario, calls: int = 3) -> float | None:
    """CPU seconds of a warm call of the scenario's step (the least of `calls`: a compiled
    step may compile again on its second call, 33 ms against well under 1 ms after), or
    None if it has no single step."""
    import time

    least = float("inf")
    try:
        instance.step()
        for _ in range(calls):
            start = time.process_time()
            instance.step()
            least = min(least, time.process_time() - start)
    except NotImplementedError:
        return None
    return least


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Pinned to the CPUs the runner chose, with as many threads; the host's state is
    recorded around the measured part so the record says what the numbers went through."""
    budget = Budget.model_validate(job["budget"])
    cpus = job.get("cpus") or host.affinity()[: budget.threads or None]  # no runner: the budget says
    os.sched_setaffinity(0, cpus)
    threads = len(cpus)
    load_before, steal = host.load_average(), host.Steal()
    result: dict[str, Any] = {"metrics": [], "checks": [], "provenance": {}}
    _pin_threads_and_seed(threads, budget.seed)
    if instructions.requested():
        instructions.shift_layout(job.get("replicate", 0))
        instructions.stretch_switch_interval()
    importlib.import_module(job["module"])
    cls = registry.get(job["scenario"])
    ctx = RunContext(params=job["params"], budget=budget, profile=job["profile"], seed=budget.seed,
                     artifact_root=Path(job["artifacts"]) if job.get("artifacts") else None,
                     replicate=job.get("replicate", 0), conformance=job.get("conformance", True))
    instance = cls()
    metrics: list[Metric] = []
    found: list[Check] = []
    watch = host.Watch(threads)
    step = "setup"
    try:
        instance.setup(ctx)
        if job.get("setup_only"):  # the runner's native set-up before counted runs (runner.set_up_natively)
            result.update(status=Status.ok.value, reason="", native_step_s=_native_step_s(instance))
            return result
        step = "measure"
        with watch:
            metrics = instance.measure(ctx)
        step = "check"
        found = instance.check(ctx) if ctx.conformance else []
    except registry.Skip as exc:
        result.update(status=Status.skipped.value, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a broken scenario is a result, not a crash
        result.update(status=Status.error.value, reason=f"{step}: {type(exc).__name__}: {exc}")
        ctx.provenance["traceback"] = traceback.format_exc(limit=8)
    else:
        overhead = timer_overhead_check(metrics)
        found = found + ([overhead] if overhead else [])
        failed = [c.name for c in found if c.failed]
        unsettled = [c.name for c in found if c.inconclusive]
        reasons = []
        if failed:
            reasons.append(f"checks failed: {', '.join(failed)}")
        if unsettled:
            reasons.append(f"checks inconclusive: {', '.join(unsettled)}")
        result.update(status=(Status.failed if failed else Status.ok).value, reason="; ".join(reasons))
    result["threads"] = thread_settings(import_torch=False)
    result["metrics"] = [m.model_dump() for m in metrics]
    result["checks"] = [c.model_dump() for c in found]
    result["provenance"] = ctx.provenance
    result["host"] = {"threads": threads, "cpus": cpus, "load_before": load_before, "load_after": host.load_average(),
                      "cgroup_cpus": host.cgroup_cpus(), "steal_fraction": steal.fraction(),
                      "governor": host.governor(), "runqueue_wait_fraction": watch.wait_fraction,
                      "cpu_per_wall": watch.cpu_per_wall, "oversubscribed": watch.oversubscribed}
    return result


def tie_to_runner(runner_pid: int | None) -> None:
    """Die with the runner, however it dies (a `kill -9` of its group included): the kernel
    sends SIGKILL (Linux parent-death signal). If the runner is already gone, stop now."""
    if runner_pid is None:
        return
    die_with_parent()
    if os.getppid() != runner_pid:
        sys.exit("mlsuite worker: the runner exited before the worker started")


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    tie_to_runner(job.get("runner_pid"))
    leftovers.note_temporary_paths(job_path.parent / leftovers.LEDGER)
    result = run_job(job)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
