"""What a scenario's steps receive: its parameters, the budget, and the harness's clock."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite import stats, timing
from suite.profiles import Budget
from suite.schema import Metric


@dataclass
class RunContext:
    params: dict[str, Any]
    budget: Budget
    profile: str
    seed: int
    provenance: dict[str, Any] = field(default_factory=dict)
    artifact_root: Path | None = None  # set by the runner: <out>/artifacts/<run>/<scenario>/<config hash>
    replicate: int = 0  # which process run of this (scenario, params) this is
    # Whether this run also does the conformance work (checks, accuracy training). Conformance
    # never depends on timing, so one run of a replicated record is enough.
    conformance: bool = True

    @property
    def artifact_dir(self) -> Path:
        """Where to write files the report links (plots); list them in provenance["artifacts"].
        Outside a run (asv, pytest-benchmark) a temporary folder."""
        if self.artifact_root is None:
            self.artifact_root = Path(tempfile.mkdtemp(prefix="mlsuite-artifacts-"))
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return self.artifact_root

    @property
    def device(self) -> str:
        return str(self.params.get("device", "cpu"))

    def time_steps(self, fn: Callable[[], Any], *, items_per_call: int, item_unit: str = "samples",
                   prefix: str = "") -> tuple[list[Metric], list[float]]:
        """Time fn under the budget: step time, throughput and CPU time metrics, plus raw times."""
        metrics, times = self.time_interleaved({prefix: fn}, items_per_call=items_per_call, item_unit=item_unit)
        return metrics[prefix], times[prefix]

    def time_interleaved(self, contenders: dict[str, Callable[[], Any]], *, items_per_call: int,
                         item_unit: str = "samples") -> tuple[dict[str, list[Metric]], dict[str, list[float]]]:
        """Time contenders side by side (keys are metric-name prefixes), so ratios between
        them are measured in the same stretch of time."""
        timed = timing.time_interleaved(contenders, self.budget, self.device)
        metrics = {prefix: self._step_metrics(prefix, result, items_per_call, item_unit)
                   for prefix, result in timed.items()}
        return metrics, {prefix: result.times for prefix, result in timed.items()}

    def _step_metrics(self, prefix: str, timed: timing.Timed, items_per_call: int, item_unit: str) -> list[Metric]:
        self.provenance[f"{prefix}warmup"] = {"calls": timed.warmup_calls, "seconds": timed.warmup_s}
        step = stats.summarize(f"{prefix}step_time", "s", False, timed.times, clock=timed.clock,
                               overhead=timed.overhead, calls_per_sample=timed.calls_per_sample)
        rate = stats.throughput(f"{prefix}throughput", f"{item_unit}/s", items_per_call,
                                timed.times, clock=timed.clock)
        rate.calls_per_sample = timed.calls_per_sample
        found = [step, rate]
        if timed.cpu_times:
            found.append(stats.summarize(f"{prefix}cpu_time", "s", False, timed.cpu_times, clock="cpu",
                                         calls_per_sample=timed.calls_per_sample))
        return found

    def cold(self, name: str, fn: Callable[[], Any]) -> tuple[Metric, Any]:
        """A cold-start cost as its own metric, never mixed into steady state."""
        seconds, result = timing.time_once(fn, self.device)
        return stats.scalar(name, "s", False, seconds, kind="cold"), result
