"""Cheap scenarios for the fault-injection trials (tests/test_faults.py): each run takes a
fraction of a second, and the server one leaves behind everything a real serving scenario
does — a server in a session of its own with a process of its own group, a child in the
worker's group and a temporary folder — none of which may outlive its run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from reference.ports import free_port
from reference.serving.process import ManagedServer, http_ok
from suite import stats
from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.schema import Metric

QUICK = {"quick": {}}


@scenario("faults.steps", grid={"n": [1, 2]}, profiles=QUICK, timeout_s=60)
class Steps(Scenario):
    def measure(self, ctx: RunContext) -> list[Metric]:
        metrics, _ = ctx.time_steps(lambda: sum(range(2000)), items_per_call=ctx.params["n"])
        return metrics


@scenario("faults.server", grid={"n": [1]}, profiles=QUICK, timeout_s=300)
class Server(Scenario):
    """Never stopped by the scenario: its runner's clean-up must do it."""

    def setup(self, ctx: RunContext) -> None:
        root = Path(tempfile.mkdtemp(prefix="mlsuite-faults-"))
        (root / "index.html").write_text("ok")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/index.html"
        command = f"sleep 600 & exec {sys.executable} -m http.server --bind 127.0.0.1 {port}"
        self.server = ManagedServer("faults-http", ["sh", "-c", command], root / "server.log",
                                    ready=lambda: http_ok(self.url), cwd=root)
        self.server.start(timeout_s=30)
        self.child = subprocess.Popen(["sleep", "600"])  # in the worker's own process group

    def fetch(self) -> None:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            response.read()

    def measure(self, ctx: RunContext) -> list[Metric]:
        metrics, _ = ctx.time_steps(self.fetch, items_per_call=1, item_unit="requests")
        return metrics


@scenario("faults.flaky", grid={"n": [1]}, profiles=QUICK, timeout_s=60)
class Flaky(Scenario):
    """An error while MLSUITE_FAULTS_FAIL is set, fine once it is not (a retry's subject)."""

    def measure(self, ctx: RunContext) -> list[Metric]:
        if os.environ.get("MLSUITE_FAULTS_FAIL"):
            raise RuntimeError("planted: failing while MLSUITE_FAULTS_FAIL is set")
        return [stats.scalar("answer", "count", True, 42)]
