"""The serving techniques as suite scenarios: one table of server x batching setting x load
point, the raw in-process limit beside it, the load generator's validation against wrk and
hey, and first-request latency with and without warm-up. Imports nothing heavy at module
level, so `mlsuite list` works with only the core installed."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from suite import stats
from suite.context import RunContext
from suite.profiles import Budget
from suite.registry import Scenario, Skip, scenario
from suite.requirements import Binary, Package, Requirement
from suite.schema import Check, Metric

MODEL = (Package("torch"), Package("scikit-learn", module="sklearn"), Package("numpy"))
HTTP = (Package("fastapi"), Package("uvicorn"), Package("httpx"),
        Package("prometheus-client", module="prometheus_client"), Package("python-multipart", module="multipart"),
        Package("pillow", module="PIL"))
TORCHSERVE = (Package("torchserve", module="ts"), Package("torch-model-archiver", module="model_archiver"),
              Package("pyyaml", module="yaml"), Binary("java"))
TRITON = (Package("tritonclient"), Package("aiohttp"), Package("grpcio", module="grpc"))
ONNX = (Package("onnx"), Package("onnxruntime"))

SERVER_GRID: dict[str, list[Any]] = {
    "model": ["small", "xlarge"],  # request overhead dominates / compute dominates
    "format": ["torchscript"],
    "threads": [1],
    "batching": ["off", "on"],
    "max_batch_size": [16],
    "max_queue_delay_ms": [2.0],
    "concurrency": [[1, 4, 16, 64]],
    "open_fractions": [[0.25, 0.5, 0.75, 1.0]],  # open-loop rates as fractions of the closed-loop peak
    "slo_ms": [50.0],
}
# quick: the large MLP, between the two: compute is a real share of a request, so batching pays
SERVER_QUICK: dict[str, list[Any]] = {"model": ["large"], "batching": ["on"], "open_fractions": [[0.5, 0.9]]}
CONFORMANCE_ROWS = 64
LOAD_ROWS = 256
WINDOWS_PER_BUDGET = 3
SHORT_BUDGET_S = 5.0  # below this (quick), one extra window to reach stability; else three


def window_policy(budget: Budget) -> Any:
    """Windows sized from the profile's budget: three windows fill max_time_s, and a point
    gets one (quick) or three (full, gpu) more windows to become stable."""
    from suite.loadgen import STABILITY_WINDOWS, WindowPolicy

    extra = 1 if budget.max_time_s < SHORT_BUDGET_S else 3
    return WindowPolicy(duration_s=budget.max_time_s / WINDOWS_PER_BUDGET, max_windows=STABILITY_WINDOWS + extra,
                        warmup_s=max(0.2, budget.warmup_s))


def saved_version(model: Any, size: str, fmt: str, seed: int) -> Path:
    """The model saved as version "1" in `fmt`, reused across runs (tracing and export cost
    seconds). The key covers size, seed, format, torch version and the model code."""
    import hashlib

    import torch

    from reference.serving import models

    code = hashlib.sha256(Path(models.__file__).read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("MLSUITE_CACHE", Path.home() / ".cache" / "mlsuite")) / "serving-models"
    root = cache / f"{size}-seed{seed}-{fmt}-torch{torch.__version__}-{code}"
    if not (root / "1" / "meta.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(dir=cache, prefix=".saving-"))
        models.save_version(model, fresh / "1", fmt)
        try:
            fresh.rename(root)  # atomic: a concurrent run sees all of it or none
        except OSError:
            shutil.rmtree(fresh, ignore_errors=True)  # another run saved it first
    return root / "1"


class PreparedModel:
    """The model under test, saved as a version directory, with its inputs and reference outputs."""

    def __init__(self, size: str, fmt: str, seed: int) -> None:
        from reference.serving import models

        self.workdir = Path(tempfile.mkdtemp(prefix="mlsuite-serving-"))
        self.model = models.build(size, seed)
        self.version_dir = saved_version(self.model, size, fmt, seed)
        rows = models.digits_rows()
        self.rows = rows[:CONFORMANCE_ROWS]
        self.load_rows = rows[:LOAD_ROWS]
        self.golden = models.golden(self.model, self.rows)
        self.eager = models.eager(self.model, self.rows)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def load_predictor(version_dir: Path, threads: int) -> Any:
    from reference.serving import models

    return models.load_version(version_dir, threads)


def raw_throughput(ctx: RunContext, predictor: Any, batch: int, threads: int, prefix: str) -> list[Metric]:
    """The physical limit: the same model file, loaded as the server loads it, called
    in-process on a full batch with the server's thread count."""
    import torch

    from reference.serving import models

    rows = models.digits_rows(batch)
    held = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        found, _ = ctx.time_steps(lambda: predictor(rows), items_per_call=batch, prefix=prefix)
    finally:
        torch.set_num_threads(held)
    ctx.provenance[f"{prefix}format"] = predictor.fmt
    return found


class ServerScenario(Scenario):
    """Start a real server in setup (cold start measured), drive it with the load
    generator in measure, judge it in check, stop it in teardown."""

    server: ClassVar[str]
    extra_requirements: ClassVar[tuple[Requirement, ...]] = ()

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        formats = ONNX if params.get("format") == "onnx" else ()
        return [*MODEL, *HTTP, *self.extra_requirements, *formats]

    def setup(self, ctx: RunContext) -> None:
        from reference.serving import deployments
        from reference.serving.process import ServerFailed

        p = ctx.params
        self.deployment = None
        self.subject = PreparedModel(p["model"], p.get("format", "torchscript"), ctx.seed)
        try:
            self.deployment = deployments.start(
                self.server, self.subject.version_dir, self.subject.workdir / "run", batching=p["batching"] == "on",
                max_batch_size=p["max_batch_size"], max_queue_delay_ms=p["max_queue_delay_ms"],
                threads=p["threads"], protocol=p.get("protocol", "json"))
        except ServerFailed as exc:
            self.teardown()
            raise Skip(f"{self.server} did not start: {exc}") from None
        ctx.provenance.update(self.deployment.provenance, model=p["model"], format=p.get("format", "torchscript"),
                              ready_s=self.deployment.ready_s)
        self.cold = [stats.scalar("cold_start_to_ready", "s", False, self.deployment.ready_s, kind="cold"),
                     stats.scalar("first_request", "s", False, self._first_request(), kind="cold")]

    def _first_request(self) -> float:
        from reference.serving.conformance import with_adapter

        async def once(adapter: Any) -> float:
            prepared = adapter.prepare(self.subject.rows[0])
            start = time.perf_counter()
            await adapter.issue(prepared)
            return time.perf_counter() - start

        assert self.deployment is not None
        return with_adapter(self.deployment.predict, once)

    def step(self) -> None:
        """One request at concurrency 1 over a kept-open connection."""
        if not hasattr(self, "_loop"):
            self._loop = asyncio.new_event_loop()
            self._adapter = self._loop.run_until_complete(self._make_adapter())
            self._prepared = self._adapter.prepare(self.subject.rows[0])
        self._loop.run_until_complete(self._adapter.issue(self._prepared))

    async def _make_adapter(self) -> Any:
        assert self.deployment is not None
        return self.deployment.predict()

    def measure(self, ctx: RunContext) -> list[Metric]:
        from suite import loadgen

        p = ctx.params
        assert self.deployment is not None
        raw = raw_throughput(ctx, load_predictor(self.subject.version_dir, p["threads"]), p["max_batch_size"],
                             p["threads"], "raw_")
        policy = window_policy(ctx.budget)
        self.closed, self.open = self._load(ctx, policy)
        found = [*self.cold, *raw]
        for result in self.closed:
            found += loadgen.metrics(result, f"c{result.level:g}_")
        for fraction, result in zip(p["open_fractions"], self.open, strict=True):
            found += loadgen.metrics(result, f"open{round(fraction * 100)}_")
        slo = p["slo_ms"] / 1000.0
        good = loadgen.goodput(self.open, slo)
        peak = max(r.throughput for r in self.closed)
        raw_rate = next(m.value for m in raw if m.name == "raw_throughput")
        found += [stats.scalar("peak_throughput", "req/s", True, peak),
                  stats.scalar("goodput", "req/s", True, good),
                  stats.scalar("serving_efficiency", "ratio", True, peak / raw_rate),
                  stats.scalar("goodput_efficiency", "ratio", True, good / raw_rate)]
        ctx.provenance.update(
            slo_p99_s=slo, event_loop=_event_loop_name(), window_s=policy.duration_s,
            unstable_points=[f"{r.mode}@{r.level:g}" for r in (*self.closed, *self.open) if not r.stable],
            load_points=[r.describe() for r in (*self.closed, *self.open)],
            efficiency_note="served req/s (1 row each) over raw in-process samples/s at a full batch")
        return found

    def _load(self, ctx: RunContext, policy: Any) -> tuple[list[Any], list[Any]]:
        """Closed loop at each concurrency, then open loop at fractions of the closed peak."""
        from reference.serving.conformance import with_adapter
        from suite import loadgen

        p = ctx.params
        assert self.deployment is not None

        async def sweep(adapter: Any) -> tuple[list[Any], list[Any]]:
            prepared = [adapter.prepare(row) for row in self.subject.load_rows]
            closed = [await loadgen.closed_loop(adapter, prepared, c, policy) for c in p["concurrency"]]
            peak = max(r.throughput for r in closed)
            opened = [await loadgen.open_loop(adapter, prepared, max(1.0, f * peak), policy, seed=ctx.seed)
                      for f in p["open_fractions"]]
            return closed, opened

        return with_adapter(self.deployment.predict, sweep)

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.serving import conformance

        assert self.deployment is not None
        try:
            return conformance.server_checks(self.deployment, self.subject.rows, self.subject.golden,
                                             self.subject.eager, concurrency=2 * ctx.params["max_batch_size"])
        finally:
            self.teardown()

    def teardown(self) -> None:
        if getattr(self, "_loop", None) is not None:
            self._loop.run_until_complete(self._adapter.aclose())
            self._loop.close()
            del self._loop
        if getattr(self, "deployment", None) is not None:
            self.deployment.stop()
            self.deployment = None
        if getattr(self, "subject", None) is not None:
            self.subject.cleanup()


def _event_loop_name() -> str:
    try:
        import uvloop

        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio"


@scenario("serving.fastapi", grid={**SERVER_GRID, "format": ["torchscript", "onnx"]},
          profiles={"quick": {**SERVER_QUICK, "format": ["torchscript"], "batching": ["off", "on"]}},
          requires=(*MODEL, *HTTP), timeout_s=600)
class ServeFastApi(ServerScenario):
    """The reference server (uvicorn + FastAPI, dynamic batching, LRU cache, warm-up)."""

    server = "fastapi"


@scenario("serving.torchserve", grid=SERVER_GRID, profiles={"quick": SERVER_QUICK},
          requires=(*MODEL, *HTTP, *TORCHSERVE), timeout_s=600)
class ServeTorchServe(ServerScenario):
    """Real TorchServe: custom handler, .mar, loopback-only APIs, token auth, batching."""

    server = "torchserve"
    extra_requirements = TORCHSERVE


@scenario("serving.triton", grid={**SERVER_GRID, "protocol": ["json", "grpc"]},
          profiles={"quick": {**SERVER_QUICK, "protocol": ["json"]}}, requires=(*MODEL, *HTTP, *TRITON),
          timeout_s=1200)
class ServeTriton(ServerScenario):
    """Real Triton (Python backend, dynamic batching), driven with KServe JSON on the lean
    client (`json`) or through tritonclient over HTTP or gRPC."""

    server = "triton"
    extra_requirements = TRITON


@scenario("serving.inprocess", grid={"model": ["small", "large", "xlarge"], "threads": [1], "batch": [1, 16, 64],
                                   "format": ["torchscript", "onnx", "state_dict"]},
          profiles={"quick": {"model": ["large"], "format": ["torchscript"], "batch": [16]}},
          requires=MODEL, timeout_s=300)
class ServeInProcess(Scenario):
    """The physical limit: the served model file called in-process, no server, no network."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*MODEL, *(ONNX if params["format"] == "onnx" else ())]

    def setup(self, ctx: RunContext) -> None:
        from reference.serving import models

        self.subject = PreparedModel(ctx.params["model"], ctx.params["format"], ctx.seed)
        self.subject.cleanup()  # nothing runs from the work directory here
        self.predictor = load_predictor(self.subject.version_dir, ctx.params["threads"])
        self.batch_rows = models.digits_rows(ctx.params["batch"])

    def step(self) -> None:
        self.predictor(self.batch_rows)

    def measure(self, ctx: RunContext) -> list[Metric]:
        p = ctx.params
        return raw_throughput(ctx, self.predictor, p["batch"], p["threads"], "")

    def check(self, ctx: RunContext) -> list[Check]:
        from suite import checks

        return [checks.close_to_golden("inprocess.outputs_match_eager", self.predictor(self.subject.rows),
                                       self.subject.golden, "fp32", baseline=self.subject.eager)]


@scenario("serving.loadgen", grid={"tool": ["wrk", "hey"], "concurrency": [4, 16, 64], "model": ["small"],
                                 "threads": [1], "rounds": [6]},
          profiles={"quick": {"tool": ["wrk"], "concurrency": [16], "rounds": [4]}}, requires=(*MODEL, *HTTP),
          timeout_s=300)
class ServeLoadgen(Scenario):
    """The load generator against wrk / hey on the same FastAPI endpoint: rounds of ours
    and theirs in ABBA order, so drift hits both alike, compared on the medians over
    rounds; plus the generator's own capacity."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*MODEL, *HTTP, Binary(params["tool"])]

    def setup(self, ctx: RunContext) -> None:
        from reference.serving import deployments
        from reference.serving.process import ServerFailed

        self.subject = PreparedModel(ctx.params["model"], "torchscript", ctx.seed)
        try:
            self.deployment = deployments.start("fastapi", self.subject.version_dir, self.subject.workdir / "run",
                                                batching=True, threads=ctx.params["threads"])
        except ServerFailed as exc:
            self.subject.cleanup()
            raise Skip(f"fastapi did not start: {exc}") from None

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.serving.conformance import with_adapter
        from suite import loadgen

        p = ctx.params
        seconds = max(1, round(ctx.budget.max_time_s))
        policy = loadgen.WindowPolicy(duration_s=seconds / 3, max_windows=3, warmup_s=0.2)
        request = self.subject.load_rows[0]

        async def ours(adapter: Any) -> Any:
            return await loadgen.closed_loop(adapter, [adapter.prepare(request)], p["concurrency"], policy)

        def external() -> Any:
            return loadgen.run_external(p["tool"], self.deployment.predict(), request, p["concurrency"], seconds)

        mine, theirs = [], []
        try:
            for round_index in range(p["rounds"]):  # ABBA: neither generator always goes first
                if round_index % 2:
                    theirs.append(external())
                mine.append(with_adapter(self.deployment.predict, ours))
                if not round_index % 2:
                    theirs.append(external())
        finally:
            self.deployment.stop()
            self.subject.cleanup()
        self.ours = mine
        self.theirs = theirs
        ctx.provenance.update(tool=p["tool"], event_loop=_event_loop_name(), seconds_per_run=seconds,
                              external=[vars(t) for t in theirs], ours=[r.describe() for r in mine])
        ours_p50 = [statistics.median(r.latencies) for r in mine]
        return [
            stats.summarize("ours_throughput", "req/s", True, [r.throughput for r in mine]),
            stats.summarize("ours_p50", "s", False, ours_p50),
            stats.summarize(f"{p['tool']}_throughput", "req/s", True, [t.throughput for t in theirs]),
            stats.summarize(f"{p['tool']}_p50", "s", False, [t.p50_s for t in theirs]),
            stats.summarize("loadgen_capacity", "req/s", True, [r.capacity for r in mine]),
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.serving import conformance

        return [*conformance.agrees_with_external(self.ours, self.theirs),
                conformance.loadgen_headroom(self.ours)]


@scenario("serving.warmup", grid={"format": ["torchscript", "onnx", "state_dict"], "model": ["small"], "threads": [1]},
          profiles={"quick": {"format": ["torchscript"]}}, requires=(*MODEL, *HTTP), timeout_s=300)
class ServeWarmup(Scenario):
    """First-request latency of the reference server started without and with warm-up."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*MODEL, *HTTP, *(ONNX if params["format"] == "onnx" else ())]

    def setup(self, ctx: RunContext) -> None:
        self.subject = PreparedModel(ctx.params["model"], ctx.params["format"], ctx.seed)

    def measure(self, ctx: RunContext) -> list[Metric]:
        found: list[Metric] = []
        self.states: dict[bool, tuple[dict[str, Any], float]] = {}
        try:
            for warmup in (False, True):
                suffix = "warmup" if warmup else "no_warmup"
                ready_s, first, steady, state = self._start_and_probe(warmup, ctx.params["threads"])
                self.states[warmup] = state
                found += [stats.scalar(f"ready_{suffix}", "s", False, ready_s, kind="cold"),
                          stats.scalar(f"first_request_{suffix}", "s", False, first, kind="cold"),
                          stats.summarize(f"steady_request_{suffix}", "s", False, steady)]
        finally:
            self.subject.cleanup()
        cold = {m.name: m.value for m in found}
        found.append(stats.scalar("first_request_speedup_from_warmup", "ratio", True,
                                  cold["first_request_no_warmup"] / cold["first_request_warmup"]))
        return found

    def _start_and_probe(self, warmup: bool,
                         threads: int) -> tuple[float, float, list[float], tuple[dict[str, Any], float]]:
        import json
        import urllib.request

        from reference.serving import deployments
        from reference.serving.conformance import with_adapter
        from reference.serving.process import ServerFailed

        try:
            deployment = deployments.start_fastapi(self.subject.version_dir, self.subject.workdir / f"run-{warmup}",
                                                   batching=True, max_batch_size=16, max_queue_delay_ms=2.0,
                                                   threads=threads, warmup=warmup)
        except ServerFailed as exc:
            raise Skip(f"fastapi did not start: {exc}") from None
        try:
            async def probe(adapter: Any) -> list[float]:
                prepared = adapter.prepare(self.subject.rows[0])
                times = []
                for _ in range(51):
                    start = time.perf_counter()
                    await adapter.issue(prepared)
                    times.append(time.perf_counter() - start)
                return times

            times = with_adapter(deployment.predict, probe)
            base = deployment.base_url
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                readiness = json.loads(response.read())
            calls = deployments.counter_total(deployment.scrape(), "mlsuite_warmup_calls_total")
        finally:
            deployment.stop()
        return deployment.ready_s, times[0], times[1:], (readiness, calls)

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.serving.conformance import warmup_reported

        return [warmup_reported(*self.states[warmup], expected=warmup) for warmup in (False, True)]
