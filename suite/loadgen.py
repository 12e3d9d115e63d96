"""The load generator: the harness owns the clock, a server adapter only issues requests.

As in MLPerf LoadGen, the system under test implements one coroutine, `issue(request)`;
the schedule, the timing and the statistics belong here:

- closed loop: `concurrency` callers, each issuing its next request when the last returns;
- open loop: Poisson arrivals at a target rate from a fixed seed. Latency is measured from
  the *scheduled* arrival, so when the server falls behind the queueing shows up in the
  tail instead of being hidden by coordinated omission;
- windows by duration or by count; a load point is accepted when the last three windows
  agree within 10% on throughput and on p99, otherwise it is reported `unstable`;
- load windows as a self-timed contender of `suite.timing.time_interleaved`, so a server's
  throughput and the raw in-process limit (or another server) share the same minutes;
- goodput by search: bisection on the Poisson rate for the highest rate whose p99 meets an
  SLO with enough samples to claim a p99, plus the knee of the latency-throughput curve;
- results: throughput, latency percentiles with the sample-size floor of `suite.stats`,
  errors by kind, latency as an HdrHistogram export, and the generator's own capacity
  (requests per second of CPU it wanted), so a reader can see it was not the bottleneck.

The HTTP client is `suite.httpclient`; servers' adapters and the cross-check against
wrk and hey live with the servers (`reference/serving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from suite import stats
from suite.httpclient import Recorder, RequestFailed
from suite.schema import Metric

STABILITY_WINDOWS = 3
STABILITY_TOLERANCE = 0.10
PLATEAU_GAIN = 0.05  # warm-up ends when throughput rises by less than this from one stretch to the next
PLATEAU_WINDOWS = 5  # windows per stretch: TorchServe's JVM rests ~3 s at one speed before its next step
MAX_OUTSTANDING = 4096  # open loop: arrivals beyond this many in flight count as `overload`
DRAIN_TIMEOUT_S = 5.0


class Adapter(Protocol):
    """What a server implements for the load generator."""

    def prepare(self, request: Any) -> Any:
        """Encode one request ahead of the run (untimed); `issue` gets the result."""

    async def issue(self, prepared: Any) -> Any:
        """Send it and return the response; raise RequestFailed (or any error) on failure."""

    def outputs(self, response: Any) -> np.ndarray:
        """The model outputs in a response (for conformance checks, never timed)."""

    async def aclose(self) -> None: ...


@runtime_checkable
class Driven(Protocol):
    """An adapter that runs a closed loop itself, from its connections' callbacks (as wrk
    does): no task or future per request, so the generator's turnaround between a
    response and the next request stays far below the server's (suite.httpclient)."""

    async def drive(self, prepared: Sequence[Any], concurrency: int, recorder: Recorder,
                    running: Callable[[], bool]) -> None: ...


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPolicy:
    """Measurement windows: fixed duration or fixed completion count, at least
    `STABILITY_WINDOWS` and at most `max_windows` of them, after `warmup_s`."""

    duration_s: float | None = None
    count: int | None = None
    max_windows: int = 8
    warmup_s: float = 0.5
    tolerance: float = STABILITY_TOLERANCE
    max_window_s: float = 30.0  # a count window that has not filled by then ends anyway
    # Completions to wait for after warm-up (within one window's time): the first batch of a
    # cold closed loop is pipeline fill, and a 0.1 s window that counts it loses ~10%.
    ramp: int = 0
    plateau: bool = False  # stop once throughput has stopped rising (a warm-up), not once stable

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.count is None):
            raise ValueError("a window is set by duration_s or by count, exactly one")
        if self.max_windows < STABILITY_WINDOWS:
            raise ValueError(f"max_windows must be at least {STABILITY_WINDOWS}")


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    latencies: list[float]  # seconds, successful requests completed in the window
    errors: Counter[str]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / (self.end - self.start)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) if self.latencies else math.inf


def spread(values: Sequence[float]) -> float:
    """max/min - 1: how far apart a set of positive values is (inf when one is 0 or inf)."""
    low, high = min(values), max(values)
    if low <= 0 or not math.isfinite(high):
        return math.inf
    return high / low - 1.0


def plateaued(windows: Sequence[Window], gain: float = PLATEAU_GAIN, k: int = PLATEAU_WINDOWS) -> bool:
    """Throughput has stopped rising: the median of the last `k` windows is within `gain`
    of the median of the `k` before them. A JIT-compiled server needs this, not a fixed
    time: TorchServe went from 421 to ~2,800 req/s over its first 17 s of load, in steps
    (1,050 to 1,400 for 6 s, then up again), so 5 s of warm-up measured it at 60% of its
    speed, and stretches of three 1 s windows ended its warm-up at ~1,200."""
    if len(windows) < 2 * k:
        return False
    recent = statistics.median(w.throughput for w in windows[-k:])
    return recent <= (1 + gain) * statistics.median(w.throughput for w in windows[-2 * k:-k])


def stable(windows: Sequence[Window], tolerance: float = STABILITY_TOLERANCE) -> bool:
    """The last STABILITY_WINDOWS windows agree within `tolerance` on throughput and p99."""
    if len(windows) < STABILITY_WINDOWS:
        return False
    last = windows[-STABILITY_WINDOWS:]
    return (spread([w.throughput for w in last]) <= tolerance
            and spread([w.p99 for w in last]) <= tolerance)


# --------------------------------------------------------------------------- results


def cpu_demand_s() -> float:
    """Seconds this process's threads spent on a CPU or runnable and waiting for one
    (Linux schedstat). A generator that is its own bottleneck wants the CPU all the time,
    whether or not a busy machine gives it one. Elsewhere: process CPU time."""
    stats_files = list(Path("/proc/self/task").glob("*/schedstat"))
    total = 0.0
    for path in stats_files:
        try:
            run_ns, wait_ns = path.read_text().split()[:2]
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        total += (int(run_ns) + int(wait_ns)) / 1e9
    return total if stats_files else time.process_time()


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    level: float  # concurrency (closed) or offered rate in requests/s (open)
    windows: list[Window]
    stable: bool
    demand_s: float  # the generator's own CPU demand over the measured windows (cpu_demand_s)
    issue_lag: list[float] = field(default_factory=list)  # open loop: sent - scheduled, seconds
    cpu_s: float = 0.0  # process CPU time over the measured windows (no run-queue wait)

    @property
    def accepted(self) -> list[Window]:
        """The windows the point is judged on: the last STABILITY_WINDOWS."""
        return self.windows[-STABILITY_WINDOWS:]

    @property
    def latencies(self) -> list[float]:
        return [s for w in self.accepted for s in w.latencies]

    @property
    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.accepted:
            total.update(w.errors)
        return total

    @property
    def duration_s(self) -> float:
        return sum(w.end - w.start for w in self.accepted)

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.completed / self.duration_s

    @property
    def p99(self) -> float:
        data = self.latencies
        return float(np.percentile(data, 99)) if data else math.inf

    @property
    def error_fraction(self) -> float:
        failed = sum(self.errors.values())
        return failed / max(1, failed + self.completed)

    @property
    def capacity(self) -> float:
        """Requests per second the generator could drive at its measured CPU demand per
        request: throughput over the fraction of the time it wanted a CPU."""
        requests = sum(len(w.latencies) + sum(w.errors.values()) for w in self.windows)
        return requests / self.demand_s if self.demand_s > 0 else math.inf

    @property
    def cpu_per_request(self) -> float:
        """Seconds of the generator's CPU per request sent: what it costs, whatever the host's load."""
        requests = sum(len(w.latencies) + sum(w.errors.values()) for w in self.windows)
        return self.cpu_s / requests if requests else math.inf

    def describe(self) -> dict[str, Any]:
        """Per-window detail for provenance."""
        return {
            "mode": self.mode, "level": self.level, "stable": self.stable,
            "window_throughput": [round(w.throughput, 2) for w in self.windows],
            "window_p99_s": [w.p99 for w in self.windows],
            "errors": dict(self.errors), "completed": self.completed,
            "loadgen_capacity_req_s": self.capacity, "loadgen_cpu_per_request_s": self.cpu_per_request,
            "p99_s": self.p99,
            "latency_hdr_us": hdr_export(self.latencies),
        }


def metrics(result: LoadResult, prefix: str) -> list[Metric]:
    """Throughput, latency (with claimed/unclaimed percentiles), errors, the generator's
    own capacity, and `stable` (1 accepted, 0 unstable) for one load point."""
    rates = stats.summarize(f"{prefix}throughput", "req/s", True, [w.throughput for w in result.accepted])
    found = [rates.model_copy(update={"value": result.throughput})]  # items over total time
    if result.latencies:
        found.append(stats.summarize(f"{prefix}latency", "s", False, result.latencies))
    found.append(stats.scalar(f"{prefix}errors", "requests", False, sum(result.errors.values())))
    found.append(stats.scalar(f"{prefix}loadgen_capacity", "req/s", True, result.capacity))
    found.append(stats.scalar(f"{prefix}loadgen_cpu_per_request", "s", False, result.cpu_per_request))
    if result.issue_lag:
        found.append(stats.summarize(f"{prefix}issue_lag", "s", False, result.issue_lag))
    found.append(stats.scalar(f"{prefix}stable", "bool", True, float(result.stable)))
    return found


# --------------------------------------------------------------------------- the loops


class _Recorder:
    """Completions as (end time, latency or None, error kind or None), in completion order,
    cut into windows by the controller."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.events: list[tuple[float, float, str | None]] = []
        self.arrived = asyncio.Event()

    def success(self, origin: float, finished: float | None = None) -> None:
        """A completed request sent at `origin`, finished now or at `finished`."""
        now = self.clock() if finished is None else finished
        self.events.append((now, now - origin, None))
        self.arrived.set()

    def failure(self, kind: str) -> None:
        self.events.append((self.clock(), 0.0, kind))
        self.arrived.set()

    def error(self, exc: BaseException) -> None:
        """A failed request, counted by the kind of its error."""
        if isinstance(exc, RequestFailed):
            self.failure(exc.kind)
        elif isinstance(exc, TimeoutError):
            self.failure("timeout")
        elif isinstance(exc, (ConnectionError, OSError)):
            self.failure(f"connection:{type(exc).__name__}")
        else:
            self.failure(f"exception:{type(exc).__name__}")


async def _issue_recorded(adapter: Adapter, prepared: Any, origin: float, recorder: _Recorder) -> None:
    try:
        await adapter.issue(prepared)
    except Exception as exc:  # noqa: BLE001 - any adapter error is a counted failure
        recorder.error(exc)
    else:
        recorder.success(origin)


async def _measure_windows(recorder: _Recorder, policy: WindowPolicy,
                           fixed: int | None = None) -> tuple[list[Window], bool, float, float]:
    """Wait out warm-up, then cut windows until stable or max_windows (exactly `fixed`
    windows when given); returns the windows, the verdict and the generator's CPU demand
    and process CPU time while measuring."""
    clock = recorder.clock
    done = plateaued if policy.plateau else partial(stable, tolerance=policy.tolerance)
    await asyncio.sleep(policy.warmup_s)
    if policy.ramp:
        await _until_recorded(recorder, policy.ramp, clock() + (policy.duration_s or policy.max_window_s))
    windows: list[Window] = []
    demand_start, cpu_start = cpu_demand_s(), time.process_time()
    cursor = len(recorder.events)
    start = recorder.events[-1][0] if policy.ramp and cursor else clock()
    while len(windows) < (fixed or policy.max_windows):
        if policy.duration_s is not None:
            await asyncio.sleep(max(0.0, start + policy.duration_s - clock()))
            end = clock()
            upto = len(recorder.events)
            while upto > cursor and recorder.events[upto - 1][0] > end:
                upto -= 1
            if upto > cursor:
                # Close at the last completion: a batching server answers in bursts, and a
                # window that opens on a burst (a ramped or a cold loop) and is cut between
                # two bursts counts part of a cycle without its burst: half a cycle short on
                # average, -4% for 8 ms cycles in 0.1 s windows.
                end = recorder.events[upto - 1][0]
        else:
            assert policy.count is not None
            await _until_recorded(recorder, cursor + policy.count, start + policy.max_window_s)
            upto = min(len(recorder.events), cursor + policy.count)
            end = recorder.events[upto - 1][0] if upto > cursor else clock()
        chunk = recorder.events[cursor:upto]
        windows.append(Window(start, end, [lat for _, lat, kind in chunk if kind is None],
                              Counter(kind for _, _, kind in chunk if kind is not None)))
        cursor, start = upto, end
        if fixed is None and done(windows):
            return windows, True, cpu_demand_s() - demand_start, time.process_time() - cpu_start
    return windows, done(windows), cpu_demand_s() - demand_start, time.process_time() - cpu_start


async def _until_recorded(recorder: _Recorder, count: int, deadline: float) -> None:
    """Wait until `count` completions are recorded or the deadline passes."""
    while len(recorder.events) < count and recorder.clock() < deadline:
        recorder.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.arrived.wait(), max(0.0, deadline - recorder.clock()))


async def _finish(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Let requests in flight finish (bounded), then cancel what is left."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def closed_loop(adapter: Adapter, prepared: Sequence[Any], concurrency: int,
                      policy: WindowPolicy, clock: Callable[[], float] = time.perf_counter,
                      fixed: int | None = None) -> LoadResult:
    """`concurrency` callers, each issuing its next request as soon as the last returns
    (exactly `fixed` windows when given, else until stable)."""
    if concurrency < 1 or not prepared:
        raise ValueError("closed loop needs concurrency >= 1 and at least one request")
    recorder = _Recorder(clock)
    running = True

    async def caller(index: int) -> None:
        while running:
            await _issue_recorded(adapter, prepared[index % len(prepared)], clock(), recorder)
            index += concurrency

    if isinstance(adapter, Driven):  # the callers live in its connections' callbacks
        tasks = [asyncio.create_task(adapter.drive(prepared, concurrency, recorder, lambda: running))]
    else:
        tasks = [asyncio.create_task(caller(k)) for k in range(concurrency)]
    try:
        windows, verdict, demand_s, cpu_s = await _measure_windows(recorder, policy, fixed)
    finally:
        running = False
        await _finish(tasks)
    return LoadResult("closed", concurrency, windows, verdict, demand_s, cpu_s=cpu_s)


def poisson_arrivals(rate: float, seed: int, block: int = 1024) -> Iterator[float]:
    """Arrival offsets (seconds from the start) of a Poisson process at `rate` per second,
    endless and the same for the same seed."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be positive, got {rate}")
    rng = np.random.default_rng(seed)
    origin = 0.0
    while True:
        offsets = origin + np.cumsum(rng.exponential(1.0 / rate, size=block))
        yield from offsets.tolist()
        origin = float(offsets[-1])


async def open_loop(adapter: Adapter, prepared: Sequence[Any], rate: float, policy: WindowPolicy,
                    seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> LoadResult:
    """Requests arrive on a seeded Poisson schedule whatever the server does; latency
    counts from the scheduled arrival, not from when the request could be sent."""
    if not prepared:
        raise ValueError("open loop needs at least one request")
    recorder = _Recorder(clock)
    in_flight: set[asyncio.Task[None]] = set()
    lag: list[float] = []

    async def schedule() -> None:
        start = clock()
        for index, offset in enumerate(poisson_arrivals(rate, seed)):
            due = start + offset
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(max(0.0, clock() - due))
            if len(in_flight) >= MAX_OUTSTANDING:
                recorder.failure("overload")
                continue
            task = asyncio.create_task(_issue_recorded(adapter, prepared[index % len(prepared)], due, recorder))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    scheduler = asyncio.create_task(schedule())
    try:
        windows, verdict, demand_s, cpu_s = await _measure_windows(recorder, policy)
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
        await _finish(list(in_flight))
    return LoadResult("open", rate, windows, verdict, demand_s, issue_lag=lag, cpu_s=cpu_s)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


def run(coroutine_factory: Callable[[], Any]) -> Any:
    """Run a load coroutine to completion on a fresh event loop (uvloop when present)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coroutine_factory())


async def fetch_outputs(adapter: Adapter, requests: Sequence[Any], concurrency: int = 1) -> list[np.ndarray]:
    """Issue each request once (at most `concurrency` at a time) and return the outputs in
    request order; for conformance checks."""
    prepared = [adapter.prepare(r) for r in requests]
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> np.ndarray:
        async with gate:
            return adapter.outputs(await adapter.issue(item))

    return list(await asyncio.gather(*(one(p) for p in prepared)))




# --------------------------------------------------------------------------- export


HDR_LOWEST_US, HDR_HIGHEST_US, HDR_DIGITS = 1, 60_000_000, 3


def hdr_export(latencies: Sequence[float]) -> str:
    """Latencies (seconds) as a compressed, base64 HdrHistogram in microseconds (1 us to
    60 s, 3 significant digits): the format HdrHistogram's tools in every language decode,
    merge and replay (`HdrHistogram.decode`)."""
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_DIGITS)
    for seconds in latencies:
        histogram.record_value(min(HDR_HIGHEST_US, max(HDR_LOWEST_US, round(seconds * 1e6))))
    return histogram.encode().decode("ascii")


# --------------------------------------------------------------------------- sessions


class LoadSession:
    """One event loop (uvloop when present) and one adapter kept across load points, so
    points and interleaved windows reuse warm connections instead of opening new ones."""

    def __init__(self, factory: Callable[[], Adapter], requests: Iterable[Any]) -> None:
        self._runner = asyncio.Runner(loop_factory=_loop_factory())

        async def make() -> tuple[Adapter, list[Any]]:
            adapter = factory()
            return adapter, [adapter.prepare(r) for r in requests]

        self.adapter, self.prepared = self._runner.run(make())
        # The generator's process holds torch and the harness too: a full collection of all
        # that paused it for ~100 ms, in the latency of every request due meanwhile. What
        # exists before the load lives through it, so the collector can leave it alone.
        gc.freeze()

    def closed(self, concurrency: int, policy: WindowPolicy, fixed: int | None = None) -> LoadResult:
        return self._runner.run(closed_loop(self.adapter, self.prepared, concurrency, policy, fixed=fixed))

    def open(self, rate: float, policy: WindowPolicy, seed: int = 0) -> LoadResult:
        return self._runner.run(open_loop(self.adapter, self.prepared, rate, policy, seed=seed))

    def warm_up(self, concurrency: int, window_s: float = 1.0, max_windows: int = 60) -> LoadResult:
        """Closed-loop load until throughput stops rising (`plateaued`), at most `max_windows`."""
        policy = WindowPolicy(duration_s=window_s, max_windows=max_windows, warmup_s=0.0, plateau=True)
        return self.closed(concurrency, policy)

    def window_source(self, concurrency: int, window_s: float, ramp: bool = True) -> WindowSource:
        return WindowSource(self, concurrency, window_s, ramp)

    def close(self) -> None:
        self._runner.run(self.adapter.aclose())
        self._runner.close()

    def __enter__(self) -> LoadSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class WindowSource:
    """A server under closed-loop load as a self-timed contender of
    `suite.timing.time_interleaved`: `run(n)` drives n consecutive windows of `window_s`
    and returns each as seconds per completed request (1 / throughput), so medians of
    these samples compare with seconds per item of any in-process contender. With `ramp`,
    each run's loop waits for `concurrency` completions (every caller answered once: the
    server's pipeline full) before its first window opens, as an in-process contender
    starts warm; without, windows start cold, as an external tool's runs do.
    Every window it cut is kept (warm-up's first), for latency percentiles and provenance."""

    session: LoadSession
    concurrency: int
    window_s: float
    ramp: bool = True
    results: list[LoadResult] = field(default_factory=list)

    def __call__(self, n: int) -> list[float]:
        policy = WindowPolicy(duration_s=self.window_s, max_windows=max(STABILITY_WINDOWS, n), warmup_s=0.0,
                              ramp=self.concurrency if self.ramp else 0)
        result = self.session.closed(self.concurrency, policy, fixed=n)
        self.results.append(result)
        return [(w.end - w.start) / max(1, len(w.latencies)) for w in result.windows]

    def windows(self, last: int) -> list[Window]:
        """The last `last` windows: those the interleaving kept as samples (warm-up's came first)."""
        return [w for r in self.results for w in r.windows][-last:]

    def latencies(self, last: int) -> list[float]:
        return [s for w in self.windows(last) for s in w.latencies]

    def errors(self, last: int) -> int:
        return sum(sum(w.errors.values()) for w in self.windows(last))


# --------------------------------------------------------------------------- goodput


P99_FLOOR = stats.min_samples_for(99.0)  # completions a probe needs before its p99 counts


def meets_slo(result: LoadResult, slo_p99_s: float, max_error_fraction: float = 0.01) -> bool:
    """A load point meets the SLO when its p99 is claimable (enough samples), within the
    SLO, and (almost) nothing failed."""
    return (result.completed >= P99_FLOOR and result.p99 <= slo_p99_s
            and result.error_fraction <= max_error_fraction)


MAX_PROBE_WINDOW_S = 2.0  # a probe is bounded: below ~130 req/s its p99 cannot be claimed in time, and it fails


def probe_policy(rate: float, policy: WindowPolicy) -> WindowPolicy:
    """STABILITY_WINDOWS windows (all accepted) long enough to hold P99_FLOOR completions
    at `rate`, at most MAX_PROBE_WINDOW_S each."""
    needed_s = 1.2 * P99_FLOOR / (rate * STABILITY_WINDOWS)
    return WindowPolicy(duration_s=min(MAX_PROBE_WINDOW_S, max(policy.duration_s or 0.0, needed_s)),
                        max_windows=STABILITY_WINDOWS, warmup_s=policy.warmup_s, tolerance=policy.tolerance)


TOP_GROWTH = 1.5


@dataclass
class GoodputSearch:
    """Bisection on the offered rate between 0 and `high` (e.g. 1.2 x the closed-loop peak),
    each probe an open loop judged by `meets_slo`, as a state machine (`next_rate`, `record`)
    so that several servers' searches can take turns probe by probe and share the same
    minutes (`search_interleaved`). A top that meets the SLO raises the top by TOP_GROWTH (a
    closed loop of a few callers can leave a batching server's capacity unseen); once a top
    fails, it stops when the bracket is within `rel_tolerance` of its top or after
    `max_probes`.

    A middle rate that fails is probed once more before the bracket comes down to it: noise
    on a shared host only ever adds latency (a burst from another process, a collection), and
    one such burst in a probe of a few seconds would otherwise cut the answer by half a
    bracket for the rest of the search. A rate fails when two probes in a row fail; both are
    on the curve."""

    high: float
    slo_p99_s: float
    rel_tolerance: float = 0.05
    max_probes: int = 10
    max_error_fraction: float = 0.01
    low: float = 0.0
    probes: list[LoadResult] = field(default_factory=list)
    capped: bool = False  # a top has failed: the answer lies below `high`
    repeat_due: bool = False  # the last probe was a middle rate's first failure

    def __post_init__(self) -> None:
        if self.high <= 0:
            raise ValueError(f"the search needs a positive upper rate, got {self.high}")

    @property
    def goodput(self) -> float:
        """req/s: the highest offered rate found to meet the SLO (0: none)."""
        return self.low

    def next_rate(self) -> float | None:
        """The rate to probe next, or None when the search is over."""
        if len(self.probes) >= self.max_probes:
            return None
        if self.repeat_due:
            return self.probes[-1].level
        if not self.capped:
            return self.high
        if self.high - self.low <= self.rel_tolerance * self.high:
            return None
        return (self.low + self.high) / 2

    def record(self, result: LoadResult) -> None:
        """Take the probe of the rate `next_rate` gave."""
        at_top = result.level >= self.high
        first_failure = not self.repeat_due and not at_top
        self.probes.append(result)
        self.repeat_due = False
        if meets_slo(result, self.slo_p99_s, self.max_error_fraction):
            self.low = result.level
            if at_top:
                self.high = TOP_GROWTH * result.level
        elif first_failure:
            self.repeat_due = True
        else:
            self.high, self.capped = result.level, True

    def curve(self) -> list[dict[str, float]]:
        """The latency-throughput points, by offered rate, for plotting and export; `repeat`
        marks a rate's second probe."""
        seen: set[float] = set()
        points = []
        for r in self.probes:
            points.append({"offered": r.level, "throughput": r.throughput, "p50_s": _pct(r, 50), "p99_s": r.p99,
                           "errors": float(sum(r.errors.values())),
                           "meets_slo": float(meets_slo(r, self.slo_p99_s, self.max_error_fraction)),
                           "repeat": float(r.level in seen)})
            seen.add(r.level)
        return sorted(points, key=lambda point: (point["offered"], point["repeat"]))


def _pct(result: LoadResult, q: float) -> float:
    return float(np.percentile(result.latencies, q)) if result.latencies else math.inf


def search_goodput(probe: Callable[[float], LoadResult], high: float, slo_p99_s: float,
                   **settings: Any) -> GoodputSearch:
    """One server's goodput search (GoodputSearch) with `probe(rate)` running the open loop."""
    return search_interleaved({"": probe}, {"": high}, slo_p99_s, **settings)[""]


def search_interleaved(probes: dict[str, Callable[[float], LoadResult]], highs: dict[str, float],
                       slo_p99_s: float, **settings: Any) -> dict[str, GoodputSearch]:
    """Several servers' goodput searches taking turns, one probe each per round, so a host
    that speeds up or slows down over the minutes of a search moves them all alike."""
    searches = {name: GoodputSearch(highs[name], slo_p99_s, **settings) for name in probes}
    while pending := [(name, rate) for name, search in searches.items()
                      if (rate := search.next_rate()) is not None]:
        for name, rate in pending:
            searches[name].record(probes[name](rate))
    return searches


def knee(throughput: Sequence[float], latency: Sequence[float]) -> int | None:
    """Index of the knee of a latency-throughput curve (Kneedle, Satopaa et al. 2011): after
    scaling both axes to [0, 1], the point farthest below the chord from the first to the
    last point, i.e. where more throughput starts to cost disproportionate latency. None
    with fewer than three points or a flat curve."""
    order = np.argsort(throughput)
    x = np.asarray(throughput, dtype=float)[order]
    y = np.asarray(latency, dtype=float)[order]
    if len(x) < 3 or not np.isfinite(y).all() or x[-1] == x[0] or y[-1] == y[0]:
        return None
    gap = (x - x[0]) / (x[-1] - x[0]) - (y - y[0]) / (y[-1] - y[0])
    best = int(np.argmax(gap))
    return int(order[best]) if gap[best] > 0 else None


# --------------------------------------------------------------------------- CPU placement


def split_cpus(cpus: set[int] | None = None) -> tuple[set[int], set[int]] | None:
    """(generator CPUs, server CPUs): the generator gets one CPU, the server the rest, so
    neither steals the other's time; None when there is only one CPU to share."""
    available = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    return {available[0]}, set(available[1:])


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the calling thread (the generator's event loop) on `cpus`, then restore."""
    if not cpus:
        yield
        return
    held = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, held)
