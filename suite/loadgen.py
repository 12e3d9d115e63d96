"""The load generator: the harness owns the clock, a server adapter only issues requests.

As in MLPerf LoadGen, the system under test implements one coroutine, `issue(request)`;
the schedule, the timing and the statistics belong here:

- closed loop: `concurrency` callers, each issuing its next request when the last returns;
- open loop: Poisson arrivals at a target rate from a fixed seed. Latency is measured from
  the *scheduled* arrival, so when the server falls behind the queueing shows up in the
  tail instead of being hidden by coordinated omission;
- windows by duration or by count; a load point is accepted when the last three windows
  agree within 10% on throughput and on p99, otherwise it is reported `unstable`;
- results: throughput, latency percentiles with the sample-size floor of `suite.stats`,
  errors by kind, goodput (the highest offered rate whose p99 meets an SLO), and the
  generator's own capacity: requests per second of CPU it wanted (time on a CPU plus time
  waiting in the run queue for one), so a reader can see it was not the bottleneck it
  measured even on a machine where it has to share the cores.

`wrk` and `hey` (Debian packages) run on the same endpoint to validate it.
Adapters: HTTP JSON (a lean keep-alive HTTP/1.1 client on asyncio), TorchServe REST,
KServe v2 JSON on the same lean client, and Triton through `tritonclient` over HTTP and
gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from suite import stats
from suite.schema import Metric

STABILITY_WINDOWS = 3
STABILITY_TOLERANCE = 0.10
MAX_OUTSTANDING = 4096  # open loop: arrivals beyond this many in flight count as `overload`
DRAIN_TIMEOUT_S = 5.0


class RequestFailed(Exception):
    """An adapter's way of saying a request did not succeed, and of what kind of failure."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Adapter(Protocol):
    """What a server implements for the load generator."""

    def prepare(self, request: Any) -> Any:
        """Encode one request ahead of the run (untimed); `issue` gets the result."""

    async def issue(self, prepared: Any) -> Any:
        """Send it and return the response; raise RequestFailed (or any error) on failure."""

    def outputs(self, response: Any) -> np.ndarray:
        """The model outputs in a response (for conformance checks, never timed)."""

    async def aclose(self) -> None: ...


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

    def describe(self) -> dict[str, Any]:
        """Per-window detail for provenance."""
        return {
            "mode": self.mode, "level": self.level, "stable": self.stable,
            "window_throughput": [round(w.throughput, 2) for w in self.windows],
            "window_p99_s": [w.p99 for w in self.windows],
            "errors": dict(self.errors), "completed": self.completed,
            "loadgen_capacity_req_s": self.capacity,
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
    if result.issue_lag:
        found.append(stats.summarize(f"{prefix}issue_lag", "s", False, result.issue_lag))
    found.append(stats.scalar(f"{prefix}stable", "bool", True, float(result.stable)))
    return found


def goodput(results: Sequence[LoadResult], slo_p99_s: float, max_error_fraction: float = 0.01) -> float:
    """The highest offered rate whose p99 meets the SLO with (almost) no errors; 0 if none."""
    passing = [r.level for r in results
               if r.mode == "open" and r.p99 <= slo_p99_s and r.error_fraction <= max_error_fraction]
    return max(passing, default=0.0)


# --------------------------------------------------------------------------- the loops


class _Recorder:
    """Completions as (end time, latency or None, error kind or None), in completion order,
    cut into windows by the controller."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.events: list[tuple[float, float, str | None]] = []
        self.arrived = asyncio.Event()

    def success(self, origin: float) -> None:
        now = self.clock()
        self.events.append((now, now - origin, None))
        self.arrived.set()

    def failure(self, kind: str) -> None:
        self.events.append((self.clock(), 0.0, kind))
        self.arrived.set()


async def _issue_recorded(adapter: Adapter, prepared: Any, origin: float, recorder: _Recorder) -> None:
    try:
        await adapter.issue(prepared)
    except RequestFailed as exc:
        recorder.failure(exc.kind)
    except TimeoutError:
        recorder.failure("timeout")
    except (ConnectionError, OSError) as exc:
        recorder.failure(f"connection:{type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - any adapter error is a counted failure
        recorder.failure(f"exception:{type(exc).__name__}")
    else:
        recorder.success(origin)


async def _measure_windows(recorder: _Recorder, policy: WindowPolicy) -> tuple[list[Window], bool, float]:
    """Wait out warm-up, then cut windows until stable or max_windows; returns the
    windows, the verdict and the generator's CPU demand while measuring."""
    clock = recorder.clock
    await asyncio.sleep(policy.warmup_s)
    windows: list[Window] = []
    demand_start = cpu_demand_s()
    start = clock()
    cursor = len(recorder.events)
    while len(windows) < policy.max_windows:
        if policy.duration_s is not None:
            await asyncio.sleep(max(0.0, start + policy.duration_s - clock()))
            end = clock()
            upto = len(recorder.events)
            while upto > cursor and recorder.events[upto - 1][0] > end:
                upto -= 1
        else:
            assert policy.count is not None
            deadline = start + policy.max_window_s
            while len(recorder.events) - cursor < policy.count and clock() < deadline:
                recorder.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(recorder.arrived.wait(), max(0.0, deadline - clock()))
            upto = min(len(recorder.events), cursor + policy.count)
            end = recorder.events[upto - 1][0] if upto > cursor else clock()
        chunk = recorder.events[cursor:upto]
        windows.append(Window(start, end, [lat for _, lat, kind in chunk if kind is None],
                              Counter(kind for _, _, kind in chunk if kind is not None)))
        cursor, start = upto, end
        if stable(windows, policy.tolerance):
            return windows, True, cpu_demand_s() - demand_start
    return windows, False, cpu_demand_s() - demand_start


async def _finish(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Let requests in flight finish (bounded), then cancel what is left."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def closed_loop(adapter: Adapter, prepared: Sequence[Any], concurrency: int,
                      policy: WindowPolicy, clock: Callable[[], float] = time.perf_counter) -> LoadResult:
    """`concurrency` callers, each issuing its next request as soon as the last returns."""
    if concurrency < 1 or not prepared:
        raise ValueError("closed loop needs concurrency >= 1 and at least one request")
    recorder = _Recorder(clock)
    running = True

    async def caller(index: int) -> None:
        while running:
            await _issue_recorded(adapter, prepared[index % len(prepared)], clock(), recorder)
            index += concurrency

    tasks = [asyncio.create_task(caller(k)) for k in range(concurrency)]
    try:
        windows, verdict, demand_s = await _measure_windows(recorder, policy)
    finally:
        running = False
        await _finish(tasks)
    return LoadResult("closed", concurrency, windows, verdict, demand_s)


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
        windows, verdict, demand_s = await _measure_windows(recorder, policy)
    finally:
        scheduler.cancel()
        await asyncio.gather(scheduler, return_exceptions=True)
        await _finish(list(in_flight))
    return LoadResult("open", rate, windows, verdict, demand_s, issue_lag=lag)


def run(coroutine_factory: Callable[[], Any]) -> Any:
    """Run a load coroutine to completion on a fresh event loop (uvloop when present)."""
    try:
        import uvloop

        return uvloop.run(coroutine_factory())
    except ImportError:
        return asyncio.run(coroutine_factory())


# --------------------------------------------------------------------------- adapters


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that parses just enough of a response: the
    status line, Content-Length or chunked encoding, and `Connection: close`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.reusable = True
        self._head: tuple[int, int | None, bool, int] | None = None  # status, length, chunked, body start

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError(f"connection closed mid-response ({exc})"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            response = self._parse()
        except ValueError as exc:
            self.reusable = False
            self.waiter.set_exception(RequestFailed("protocol", str(exc)))
            return
        if response is not None:
            self.waiter.set_result(response)

    def _parse(self) -> tuple[int, bytes] | None:
        if self._head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            declared = headers.get("content-length")
            if headers.get("connection", "").lower() == "close":
                self.reusable = False
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self._head = (status, int(declared) if declared is not None else None, chunked, end + 4)
        status, length, chunked, start = self._head
        if chunked:
            body, consumed = _dechunk(self.buffer, start)
            if body is None:
                return None
        else:
            if length is None:
                raise ValueError("response without Content-Length or chunked encoding")
            if len(self.buffer) < start + length:
                return None
            body, consumed = bytes(self.buffer[start:start + length]), start + length
        del self.buffer[:consumed]
        self._head = None
        return status, body

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes | None, int]:
    """The body of a chunked response and the bytes it took, or (None, 0) if incomplete."""
    parts: list[bytes] = []
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None, 0
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", position)
            return (b"".join(parts), trailer_end + 2) if trailer_end >= 0 else (None, 0)
        if len(buffer) < position + size + 2:
            return None, 0
        parts.append(bytes(buffer[position:position + size]))
        position += size + 2


class HttpJsonAdapter:
    """POST JSON to one URL over at most `max_connections` keep-alive connections (as wrk2
    does: more arrivals than connections wait for one, and that wait counts in their
    latency); a non-2xx status is a failure of kind `http_<status>`."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout_s: float = 30.0,
                 to_json: Callable[[Any], Any] | None = None, outputs_key: str = "outputs",
                 max_connections: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"HttpJsonAdapter needs an http:// URL, got {url!r}")
        self.url = url
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = parts.path or "/"
        self.timeout_s = timeout_s
        self.to_json = to_json or (lambda request: request)  # a request as the server's JSON body
        self.outputs_key = outputs_key
        extra = {"Content-Type": "application/json", **(headers or {})}
        self._head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                      + "".join(f"{k}: {v}\r\n" for k, v in extra.items()))
        self.headers = extra
        self.max_connections = max_connections
        self._idle: list[_HttpConnection] = []
        self._slots: asyncio.Semaphore | None = None  # made in the running loop

    def encode(self, request: Any) -> bytes:
        return json.dumps(self.to_json(request)).encode()

    def prepare(self, request: Any) -> bytes:
        body = request if isinstance(request, bytes) else self.encode(request)
        return f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def _connection(self) -> _HttpConnection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(
            _HttpConnection, self.host, self.port)
        return connection

    async def issue(self, prepared: bytes) -> bytes:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            async with asyncio.timeout(self.timeout_s):
                connection = await self._connection()
                try:
                    status, body = await connection.request(prepared)
                except BaseException:
                    connection.close()  # a half-read response makes the connection useless
                    raise
            if connection.reusable:
                self._idle.append(connection)
        if not 200 <= status < 300:
            raise RequestFailed(f"http_{status}", body[:200].decode(errors="replace"))
        return body

    def outputs(self, response: bytes) -> np.ndarray:
        return np.asarray(json.loads(response)[self.outputs_key], dtype=np.float64)

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        self._slots = None


class TorchServeAdapter(HttpJsonAdapter):
    """TorchServe's inference API: POST /predictions/<model> with the inference token."""

    def __init__(self, base_url: str, model: str, token: str | None, timeout_s: float = 30.0,
                 to_json: Callable[[Any], Any] | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(f"{base_url.rstrip('/')}/predictions/{model}", headers, timeout_s, to_json)


class KServeJsonAdapter(HttpJsonAdapter):
    """The KServe v2 (Triton) inference protocol in JSON over the lean HTTP client: one
    FP32 input tensor, batch dimension first. Costs the generator far less CPU per request
    than tritonclient, so the server, not the client, sets the pace."""

    def __init__(self, infer_url: str, input_name: str = "INPUT", output_name: str = "OUTPUT",
                 timeout_s: float = 30.0) -> None:
        super().__init__(infer_url, timeout_s=timeout_s, to_json=self._tensor)
        self.input_name, self.output_name = input_name, output_name

    def _tensor(self, request: Any) -> dict[str, Any]:
        rows = np.atleast_2d(np.asarray(request, dtype=np.float32))
        return {"inputs": [{"name": self.input_name, "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.reshape(-1).tolist()}]}

    def outputs(self, response: bytes) -> np.ndarray:
        found = next(o for o in json.loads(response)["outputs"] if o["name"] == self.output_name)
        return np.asarray(found["data"], dtype=np.float64).reshape(found["shape"])


class _TritonAdapter:
    """Shared by the Triton HTTP and gRPC adapters: one FP32 input, one output, the batch
    dimension first. A request is a (rows, features) array."""

    def __init__(self, client: Any, module: Any, model: str, input_name: str, output_name: str) -> None:
        self.client, self.module = client, module
        self.model, self.input_name, self.output_name = model, input_name, output_name

    def prepare(self, request: Any) -> Any:
        rows = np.atleast_2d(np.asarray(request, dtype=np.float32))
        tensor = self.module.InferInput(self.input_name, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        return [tensor]

    async def issue(self, prepared: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return await self.client.infer(self.model, prepared)
        except InferenceServerException as exc:
            raise RequestFailed(f"triton_{exc.status() or 'error'}", exc.message() or "") from None

    def outputs(self, response: Any) -> np.ndarray:
        return np.asarray(response.as_numpy(self.output_name), dtype=np.float64)

    async def aclose(self) -> None:
        await self.client.close()


class TritonHttpAdapter(_TritonAdapter):
    def __init__(self, url: str, model: str, input_name: str = "INPUT", output_name: str = "OUTPUT",
                 concurrency: int = 64) -> None:
        import tritonclient.http.aio as module

        client = module.InferenceServerClient(urlsplit(url).netloc or url, conn_limit=max(concurrency, 100))
        super().__init__(client, module, model, input_name, output_name)


class TritonGrpcAdapter(_TritonAdapter):
    def __init__(self, address: str, model: str, input_name: str = "INPUT", output_name: str = "OUTPUT") -> None:
        import tritonclient.grpc.aio as module

        super().__init__(module.InferenceServerClient(address), module, model, input_name, output_name)


async def fetch_outputs(adapter: Adapter, requests: Sequence[Any], concurrency: int = 1) -> list[np.ndarray]:
    """Issue each request once (at most `concurrency` at a time) and return the outputs in
    request order; for conformance checks."""
    prepared = [adapter.prepare(r) for r in requests]
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> np.ndarray:
        async with gate:
            return adapter.outputs(await adapter.issue(item))

    return list(await asyncio.gather(*(one(p) for p in prepared)))


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ExternalResult:
    tool: str
    throughput: float  # requests/s
    p50_s: float
    non_2xx: int


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_wrk(text: str) -> ExternalResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if rate is None or p50 is None:
        raise ValueError(f"cannot read wrk output: {text[-300:]!r}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return ExternalResult("wrk", float(rate.group(1)), float(p50.group(1)) * _UNITS[p50.group(2)],
                          int(bad.group(1)) if bad else 0)


def parse_hey(text: str) -> ExternalResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"50%+ in ([\d.]+) secs", text)
    if rate is None or p50 is None:
        raise ValueError(f"cannot read hey output: {text[-300:]!r}")
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    return ExternalResult("hey", float(rate.group(1)), float(p50.group(1)),
                          sum(n for c, n in codes.items() if not 200 <= c < 300))


def run_external(tool: str, adapter: HttpJsonAdapter, request: Any, concurrency: int,
                 duration_s: float) -> ExternalResult:
    """Drive the adapter's endpoint with wrk or hey: same body, headers and concurrency,
    one generator thread for wrk (like this one)."""
    if shutil.which(tool) is None:
        raise FileNotFoundError(f"{tool} is not on PATH (Debian: apt-get install {tool})")
    body = request if isinstance(request, bytes) else adapter.encode(request)
    seconds = max(1, round(duration_s))
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        body_path = Path(tmp, "body")
        body_path.write_bytes(body)
        if tool == "wrk":
            lines = ['wrk.method = "POST"', f'wrk.body = io.open("{body_path}", "rb"):read("*a")']
            lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in adapter.headers.items()]
            script = Path(tmp, "post.lua")
            script.write_text("\n".join(lines) + "\n")
            command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), adapter.url]
            parse = parse_wrk
        elif tool == "hey":
            command = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-D", str(body_path)]
            for k, v in adapter.headers.items():
                command += ["-T", v] if k.lower() == "content-type" else ["-H", f"{k}: {v}"]
            command.append(adapter.url)
            parse = parse_hey
        else:
            raise ValueError(f"unknown external load generator {tool!r}; wrk or hey")
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} exited with {done.returncode}: {done.stderr[-300:]}")
    return parse(done.stdout)


def agreement(ours: float, theirs: float) -> float:
    """|ours / theirs - 1|: relative disagreement with an external reference."""
    return abs(ours / theirs - 1.0) if theirs > 0 else math.inf
