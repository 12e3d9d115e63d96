"""The trackers as suite scenarios: what logging costs (per logged step, and as a slowdown of
a real training step), and conformance (exact round trip; a killed run stays readable and
unfinished in a store that still works). Imports nothing heavy at module level."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

from suite import stats
from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.requirements import Package, Requirement
from suite.schema import Check, Metric

# One process run per record: the logging costs are timed over many steps inside one run,
# and each run starts a tracker of its own.
MAX_REPLICATES = 1

TORCH = (Package("torch"), Package("scikit-learn", module="sklearn"), Package("matplotlib"), Package("psutil"))
# Steps the killed child must have flushed first. W&B writes its log in 32 KiB blocks, so it
# is given enough steps to fill some: with fewer, a crash loses the whole run.
INTERRUPT_AFTER = {"mlflow": 20, "tensorboard": 20, "wandb": 600}
TRAIN_BATCH = 64


class TrackingScenario(Scenario):
    """Shared by the three tools; a subclass names its tool and tracker options."""

    tool: ClassVar[str]

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*TORCH, *self.requires]

    def options(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    def setup(self, ctx: RunContext) -> None:
        import torch

        from reference.tracking import trackers
        from reference.training import data, models

        self.scratch = tempfile.TemporaryDirectory(prefix=f"mlsuite-{self.tool}-", ignore_cleanup_errors=True)
        self.store = Path(self.scratch.name)  # one store for all runs: MLflow creates its schema once
        self.tracker_class = trackers.tracker_class(self.tool)
        self.cold_metrics = []
        metric, self.tracker = ctx.cold("store_open", lambda: self.tracker_class(self.store,
                                                                                  **self.options(ctx.params)))
        self.cold_metrics.append(metric)
        metric, _ = ctx.cold("run_start", lambda: self.tracker.start("overhead", {"purpose": "overhead"}))
        self.cold_metrics.append(metric)
        self.keys = [f"metric_{i}" for i in range(ctx.params["metrics_per_step"])]
        self.step_number = 0
        split = data.digits()
        self.model = models.build("mlp", "small", ctx.seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.x, self.y = split.x_train[:TRAIN_BATCH], split.y_train[:TRAIN_BATCH]
        ctx.provenance.update(tool=self.tool, options=self.options(ctx.params), store=str(self.tracker.locator()))

    def step(self) -> None:
        """Log one step of `metrics_per_step` values."""
        self.step_number += 1
        self.tracker.log_metrics(self.step_number, {k: 1.0 / (self.step_number + i) for i, k in enumerate(self.keys)})

    def train_step(self) -> float:
        from torch import nn

        from reference.training.loop import train_step

        return float(train_step(self.model, self.optimizer, nn.functional.cross_entropy, self.x, self.y))

    def measure(self, ctx: RunContext) -> list[Metric]:
        log, log_times = ctx.time_steps(self.step, items_per_call=len(self.keys), item_unit="values", prefix="log_")
        train, train_times = ctx.time_steps(self.train_step, items_per_call=TRAIN_BATCH, prefix="train_")
        queued = self.step_number
        flush, _ = ctx.cold("flush", self.tracker.flush)
        finish, _ = ctx.cold("finish", self.tracker.finish)
        ctx.provenance["steps_queued_before_flush"] = queued
        return [
            *log,
            # how many training steps of the digits MLP one logged step costs
            stats.ratio_of_medians("log_cost_in_train_steps", log_times, train_times, higher_is_better=False),
            # async logging returns at once and pays later: the drain, per logged step
            stats.scalar("flush_per_logged_step", "s", False, flush.value / max(queued, 1)),
            *train, *self.cold_metrics, flush, finish,
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tracking import conformance, interrupted

        run, model, example = conformance.sample_payload(ctx.seed)
        tracker = self.tracker_class(self.store, **self.options(ctx.params))
        conformance.log_run(tracker, "round-trip", run, model, example)
        found = [conformance.round_trip(f"track.{self.tool}.round_trip", self.tracker_class, run,
                                        self.tracker_class.read(tracker.locator()))]
        killed = interrupted.interrupt(self.tool, self.store, ctx.seed, after_flushed=INTERRUPT_AFTER[self.tool],
                                       options=self.options(ctx.params))  # killed in the mode it was measured in
        ctx.provenance["interrupted"] = {"flushed_when_killed": killed.flushed, "exit_code": killed.exit_code,
                                         "helpers_killed_after_grace": killed.orphans_killed}
        found += conformance.interrupted_run(f"track.{self.tool}.interrupted", self.tracker_class, killed, ctx.seed)
        found.append(conformance.store_usable(f"track.{self.tool}.store_usable_after_kill", self.tracker_class,
                                              self.store, ctx.seed))
        return found


@scenario("tracking.mlflow", grid={"metrics_per_step": [1, 10], "synchronous": [True, False]},
          profiles={"quick": {"metrics_per_step": [10]}}, requires=(Package("mlflow"),), timeout_s=900)
class TrackMlflow(TrackingScenario):
    """MLflow, sqlite store + explicit artifact location, synchronous or async logging."""

    tool = "mlflow"

    def options(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"synchronous": params["synchronous"]}


@scenario("tracking.tensorboard", grid={"metrics_per_step": [1, 10]}, profiles={"quick": {"metrics_per_step": [10]}},
          requires=(Package("tensorboard"),), timeout_s=600)
class TrackTensorBoard(TrackingScenario):
    """TensorBoard SummaryWriter (double-precision scalars, hparams, graph)."""

    tool = "tensorboard"


@scenario("tracking.wandb", grid={"metrics_per_step": [1, 10]}, profiles={"quick": {"metrics_per_step": [10]}},
          requires=(Package("wandb"),), timeout_s=600)
class TrackWandb(TrackingScenario):
    """W&B in offline mode (no network)."""

    tool = "wandb"
