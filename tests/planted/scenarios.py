"""Each scenario misbehaves in one way the runner must record without losing the others."""

from __future__ import annotations

import os
import time

from suite import checks, stats
from suite.context import RunContext
from suite.registry import Scenario, Skip, scenario
from suite.requirements import Binary
from suite.schema import Check, Metric

QUICK = {"quick": {}}


@scenario("planted.ok", grid={"n": [1, 2]}, profiles=QUICK)
class Fine(Scenario):
    def step(self) -> None:
        sum(range(1000))

    def measure(self, ctx: RunContext) -> list[Metric]:
        metrics, _ = ctx.time_steps(self.step, items_per_call=ctx.params["n"])
        return metrics

    def check(self, ctx: RunContext) -> list[Check]:
        return [checks.holds("planted.fine", True, "nothing")]


@scenario("planted.raises", grid={"n": [1]}, profiles=QUICK)
class Raises(Scenario):
    def measure(self, ctx: RunContext) -> list[Metric]:
        raise RuntimeError("planted failure in measure")


@scenario("planted.crashes", grid={"n": [1]}, profiles=QUICK)
class Crashes(Scenario):
    def measure(self, ctx: RunContext) -> list[Metric]:
        print("about to die", flush=True)
        os._exit(3)


@scenario("planted.hangs", grid={"n": [1]}, profiles=QUICK, timeout_s=3)
class Hangs(Scenario):
    def measure(self, ctx: RunContext) -> list[Metric]:
        time.sleep(60)
        return []


@scenario("planted.check_fails", grid={"n": [1]}, profiles=QUICK)
class CheckFails(Scenario):
    def measure(self, ctx: RunContext) -> list[Metric]:
        return [stats.scalar("size", "bytes", False, 10)]

    def check(self, ctx: RunContext) -> list[Check]:
        return [checks.at_most("planted.too_big", 10, 5, "a bound of 5"),
                checks.ratio_within("planted.unsettled", 1.05, 0.95, 1.15, 10, 0.1, "a band of +-10%")]


@scenario("planted.needs_binary", grid={"n": [1]}, profiles=QUICK, requires=(Binary("no-such-binary-mlsuite"),))
class NeedsBinary(Scenario):
    def measure(self, ctx: RunContext) -> list[Metric]:
        raise AssertionError("must not run: its requirement is unmet")


@scenario("planted.skips_at_runtime", grid={"n": [1]}, profiles=QUICK)
class SkipsAtRuntime(Scenario):
    def setup(self, ctx: RunContext) -> None:
        raise Skip("server refused to start: planted")
