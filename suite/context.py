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
        """Time fn under the budget: step time and throughput metrics, plus raw times."""
        timed = timing.time_calls(fn, self.budget, self.device)
        self.provenance[f"{prefix}warmup"] = {"calls": timed.warmup_calls, "seconds": timed.warmup_s}
        step = stats.summarize(f"{prefix}step_time", "s", False, timed.times, clock=timed.clock,
                               overhead=timed.overhead, calls_per_sample=timed.calls_per_sample)
        rate = stats.throughput(f"{prefix}throughput", f"{item_unit}/s", items_per_call,
                                timed.times, clock=timed.clock)
        rate.calls_per_sample = timed.calls_per_sample
        return [step, rate], timed.times

    def cold(self, name: str, fn: Callable[[], Any]) -> tuple[Metric, Any]:
        """A cold-start cost as its own metric, never mixed into steady state."""
        seconds, result = timing.time_once(fn, self.device)
        return stats.scalar(name, "s", False, seconds, kind="cold"), result
