"""A scenario whose setup leaves a file behind on first use, as optimize's trained weights
do: a counted run that made the file would count unlike one that found it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.schema import Metric

CACHE_ENV = "MLSUITE_TEST_CACHE"


@scenario("cache.first_use", grid={"n": [1]}, profiles={"quick": {}})
class FirstUseLeavesACache(Scenario):
    def setup(self, ctx: RunContext) -> None:
        made = Path(os.environ[CACHE_ENV], "made")
        with Path(os.environ[CACHE_ENV], "setups").open("a") as setups:  # one line per setup, in any process
            setups.write(f"{os.environ.get('MLSUITE_COUNT', 'native')}\n")
        self.found = made.exists()
        if not self.found:  # the work a first run does; and on how many CPUs it did it
            made.write_text(str(len(os.sched_getaffinity(0))))

    def measure(self, ctx: RunContext) -> list[Metric]:
        ctx.provenance["found_cache"] = self.found
        metrics, _ = ctx.time_steps(lambda: sum(range(1000)), items_per_call=ctx.params["n"])
        return metrics


@scenario("cache.long_step", grid={"n": [1]}, profiles={"quick": {}})
class LongStep(Scenario):
    """A step of ~0.2 CPU s natively: far too long to count, known before Valgrind starts."""

    def step(self) -> None:
        until = time.process_time() + 0.2
        while time.process_time() < until:
            pass

    def measure(self, ctx: RunContext) -> list[Metric]:
        metrics, _ = ctx.time_steps(self.step, items_per_call=1)
        return metrics
