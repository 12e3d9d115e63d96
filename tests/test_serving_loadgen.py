"""The load generator (suite/loadgen.py): windows and the stability rule, closed and open
loops, coordinated omission, error kinds, goodput, its HTTP client against a minimal
server, and its validation against wrk and hey (with planted slow and CPU-hungry
generators that the checks must catch)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("httpx")

from reference.serving import conformance  # noqa: E402
from suite import loadgen  # noqa: E402

pytestmark = pytest.mark.serving


def window(throughput: float, p99: float, n: int = 100) -> loadgen.Window:
    """A 1-second window with n latencies whose 99th percentile is p99."""
    latencies = [p99 * 0.5] * (n - 2) + [p99, p99]
    w = loadgen.Window(0.0, n / throughput, latencies, Counter())
    assert math.isclose(w.p99, p99, rel_tol=0.02)
    return w


def test_stable_needs_three_windows_agreeing_on_throughput_and_p99() -> None:
    agreeing = [window(1000, 0.010), window(1040, 0.0104), window(980, 0.0099)]
    assert loadgen.stable(agreeing)
    assert not loadgen.stable(agreeing[:2])
    assert not loadgen.stable([*agreeing[:2], window(1200, 0.010)])  # throughput 22% apart
    assert not loadgen.stable([*agreeing[:2], window(1000, 0.013)])  # p99 30% apart
    assert loadgen.stable([window(10, 5.0), *agreeing])  # only the last three count


def test_window_policy_refuses_ambiguous_or_short_settings() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        loadgen.WindowPolicy(duration_s=1.0, count=10)
    with pytest.raises(ValueError, match="exactly one"):
        loadgen.WindowPolicy()
    with pytest.raises(ValueError, match="max_windows"):
        loadgen.WindowPolicy(count=10, max_windows=2)


class SleepyAdapter:
    """A fake server: each request takes `service_s`; `serial` makes it one at a time.
    Tracks the most requests it ever had in flight."""

    def __init__(self, service_s: float, serial: bool = False, fail_every: int = 0) -> None:
        self.service_s = service_s
        self.serial = serial
        self.fail_every = fail_every
        self.in_flight = self.peak = self.calls = 0
        self._lock: asyncio.Lock | None = None

    def prepare(self, request: Any) -> Any:
        return request

    async def issue(self, prepared: Any) -> Any:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.fail_every and self.calls % self.fail_every == 0:
                raise loadgen.RequestFailed("http_503", "shed")
            if self.serial:
                self._lock = self._lock or asyncio.Lock()
                async with self._lock:
                    await asyncio.sleep(self.service_s)
            else:
                await asyncio.sleep(self.service_s)
            return prepared
        finally:
            self.in_flight -= 1

    def outputs(self, response: Any) -> np.ndarray:
        return np.asarray(response)

    async def aclose(self) -> None:
        return None


def test_closed_loop_holds_exactly_the_concurrency() -> None:
    adapter = SleepyAdapter(0.002)
    policy = loadgen.WindowPolicy(count=40, max_windows=3, warmup_s=0.05)
    result = loadgen.run(lambda: loadgen.closed_loop(adapter, [1, 2, 3], 6, policy))
    assert adapter.peak == 6
    assert [len(w.latencies) for w in result.windows] == [40, 40, 40]  # count windows are exact
    assert result.mode == "closed" and result.level == 6
    assert result.windows[0].end <= result.windows[1].start + 1e-12  # windows tile the run


def test_errors_are_counted_by_kind_and_not_as_throughput() -> None:
    adapter = SleepyAdapter(0.001, fail_every=5)
    policy = loadgen.WindowPolicy(count=50, max_windows=3, warmup_s=0.0)
    result = loadgen.run(lambda: loadgen.closed_loop(adapter, [0], 2, policy))
    failed = sum(result.errors.values())
    assert set(result.errors) == {"http_503"}
    assert failed + result.completed == 150
    assert 0.15 <= result.error_fraction <= 0.25


def test_poisson_arrivals_are_seeded_and_at_the_rate() -> None:
    from scipy import stats as scipy_stats

    def first(seed: int, n: int = 20000) -> np.ndarray:
        stream = loadgen.poisson_arrivals(500.0, seed)
        return np.array([next(stream) for _ in range(n)])

    a, b, c = first(7), first(7), first(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    gaps = np.diff(a, prepend=0.0)
    assert abs(gaps.mean() - 1 / 500) < 0.03 / 500
    assert scipy_stats.kstest(gaps, "expon", args=(0, 1 / 500)).pvalue > 1e-3


def test_open_loop_shows_queueing_that_a_closed_loop_hides() -> None:
    """A server that handles one request at a time in 20 ms, offered 100 requests/s: the
    backlog grows, and latency counted from each scheduled arrival shows it (coordinated
    omission would report ~20 ms, which is what the closed loop at concurrency 1 sees)."""
    policy = loadgen.WindowPolicy(duration_s=0.3, max_windows=3, warmup_s=0.0)
    opened = loadgen.run(lambda: loadgen.open_loop(SleepyAdapter(0.02, serial=True), [0], 100.0, policy, seed=1))
    closed = loadgen.run(lambda: loadgen.closed_loop(SleepyAdapter(0.02, serial=True), [0], 1, policy))
    assert max(opened.latencies) > 0.2  # ~0.9 s of arrivals, served at half the rate
    assert max(opened.latencies) > 5 * float(np.median(closed.latencies))
    assert not opened.stable  # latency keeps growing window after window


def result_at(rate: float, p99: float, errors: int = 0) -> loadgen.LoadResult:
    w = window(rate, p99)
    w.errors.update({"http_503": errors})
    return loadgen.LoadResult("open", rate, [w, w, w], True, demand_s=0.1)


def test_goodput_is_the_highest_rate_meeting_the_slo() -> None:
    points = [result_at(100, 0.01), result_at(200, 0.02), result_at(300, 0.08), result_at(250, 0.03, errors=50)]
    assert loadgen.goodput(points, slo_p99_s=0.05) == 200  # 300 misses the SLO, 250 sheds load
    assert loadgen.goodput(points, slo_p99_s=0.001) == 0.0


def test_metrics_carry_units_and_flag_unclaimed_percentiles() -> None:
    found = {m.name: m for m in loadgen.metrics(result_at(100, 0.01), "c4_")}
    assert {"c4_throughput", "c4_latency", "c4_errors", "c4_loadgen_capacity", "c4_stable"} <= set(found)
    latency = found["c4_latency"]
    assert latency.unit == "s" and not latency.higher_is_better
    p99 = next(p for p in latency.percentiles if p.q == 99.0)
    assert latency.n == 300 and not p99.claimed and p99.min_samples == 662
    assert found["c4_throughput"].value == pytest.approx(100)
    assert found["c4_stable"].value == 1.0


# --------------------------------------------------------------------------- HTTP client


async def _tiny_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: Any) -> None:
    with connections.get_lock():
        connections.value += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            body = b'{"outputs": [1.0, 2.0]}'
            if path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\n" + body[:5] + b"\r\n" + f"{len(body) - 5:x}".encode() + b"\r\n"
                             + body[5:] + b"\r\n0\r\n\r\n")
            elif path == "/close":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
                writer.close()
                return
            else:
                status = b"503 Service Unavailable" if path == "/busy" else b"200 OK"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _serve_tiny(port: Any, connections: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _tiny_handler(r, w, connections), "127.0.0.1", 0)
        port.value = server.sockets[0].getsockname()[1]
        await server.serve_forever()

    asyncio.run(main())


class TinyHttpServer:
    """A minimal HTTP/1.1 server on loopback in a process of its own (so its CPU is not
    the generator's): /ok (Content-Length), /chunked, /close (Connection: close), /busy
    (503). Counts the connections it accepted."""

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._port = context.Value("i", 0)
        self._connections = context.Value("i", 0)
        self._process = context.Process(target=_serve_tiny, args=(self._port, self._connections), daemon=True)

    @property
    def connections(self) -> int:
        return int(self._connections.value)

    def __enter__(self) -> TinyHttpServer:
        import time

        self._process.start()
        deadline = time.monotonic() + 10
        while self._port.value == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.kill()
        self._process.join(5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._port.value}{path}"


@pytest.fixture
def tiny_server() -> Iterator[TinyHttpServer]:
    with TinyHttpServer() as server:
        yield server


@pytest.mark.parametrize("path", ["/ok", "/chunked", "/close"])
def test_http_adapter_reads_every_framing(tiny_server: TinyHttpServer, path: str) -> None:
    adapter = loadgen.HttpJsonAdapter(tiny_server.url(path))
    outputs = loadgen.run(lambda: loadgen.fetch_outputs(adapter, [{"x": 1}] * 5))
    assert [o.tolist() for o in outputs] == [[1.0, 2.0]] * 5
    expected_connections = 5 if path == "/close" else 1  # keep-alive reuses one connection
    assert tiny_server.connections == expected_connections


def test_http_adapter_caps_connections_and_reports_status_errors(tiny_server: TinyHttpServer) -> None:
    adapter = loadgen.HttpJsonAdapter(tiny_server.url("/ok"), max_connections=3)
    policy = loadgen.WindowPolicy(count=30, max_windows=3, warmup_s=0.0)
    loadgen.run(lambda: loadgen.open_loop(adapter, [adapter.prepare({"x": 1})], 2000.0, policy))
    assert tiny_server.connections <= 3
    busy = loadgen.HttpJsonAdapter(tiny_server.url("/busy"))
    with pytest.raises(loadgen.RequestFailed) as failure:
        loadgen.run(lambda: busy.issue(busy.prepare({"x": 1})))
    assert failure.value.kind == "http_503"


def test_http_adapter_refuses_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        loadgen.HttpJsonAdapter("https://example.org/predict")


# --------------------------------------------------------------------------- validation

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/predict
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.12ms    2.01ms  30.11ms   80.00%
  Latency Distribution
     50%    5.87ms
     75%    6.90ms
     90%    8.12ms
     99%   14.30ms
  5120 requests in 2.00s, 1.20MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   2559.51
Transfer/sec:    600.00KB
"""

HEY_OUTPUT = """Summary:
  Total:\t2.0012 secs
  Requests/sec:\t2104.3311

Latency distribution:
  10% in 0.0041 secs
  50% in 0.0062 secs
  99% in 0.0150 secs

Status code distribution:
  [200]\t4200 responses
  [503]\t11 responses
"""


def test_external_outputs_are_parsed() -> None:
    wrk = loadgen.parse_wrk(WRK_OUTPUT)
    assert (wrk.throughput, wrk.p50_s, wrk.non_2xx) == (2559.51, pytest.approx(5.87e-3), 3)
    hey = loadgen.parse_hey(HEY_OUTPUT)
    assert (hey.throughput, hey.p50_s, hey.non_2xx) == (2104.3311, 0.0062, 11)
    with pytest.raises(ValueError, match="cannot read wrk"):
        loadgen.parse_wrk("connection refused")


class SlowAdapter(loadgen.HttpJsonAdapter):
    """Planted bug: a generator that sits on every response for 5 ms before recording it."""

    async def issue(self, prepared: bytes) -> bytes:
        body = await super().issue(prepared)
        await asyncio.sleep(0.005)
        return body


class GreedyAdapter(loadgen.HttpJsonAdapter):
    """Planted bug: a generator that burns 3 ms of CPU per request."""

    async def issue(self, prepared: bytes) -> bytes:
        import time

        end = time.process_time() + 0.003
        while time.process_time() < end:
            pass
        return await super().issue(prepared)


def ours(adapter: loadgen.HttpJsonAdapter, concurrency: int = 4) -> loadgen.LoadResult:
    policy = loadgen.WindowPolicy(duration_s=0.4, max_windows=3, warmup_s=0.1)
    return loadgen.run(lambda: loadgen.closed_loop(adapter, [adapter.prepare({"x": 1})], concurrency, policy))


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["wrk", "hey"])
def test_external_tool_agreement_catches_a_slow_generator(tiny_server: TinyHttpServer, tool: str) -> None:
    import shutil

    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (apt-get install {tool})")
    url = tiny_server.url("/ok")
    theirs = loadgen.run_external(tool, loadgen.HttpJsonAdapter(url), {"x": 1}, 4, 1)
    assert theirs.throughput > 0 and theirs.non_2xx == 0
    slow = conformance.agrees_with_external([ours(SlowAdapter(url))], [theirs])
    assert not any(check.passed for check in slow)  # 5 ms per request is far outside 10%
    assert "ours" in slow[0].detail and tool in slow[0].name


def test_headroom_check_catches_a_cpu_hungry_generator(tiny_server: TinyHttpServer) -> None:
    url = tiny_server.url("/ok")
    lean = conformance.loadgen_headroom([ours(loadgen.HttpJsonAdapter(url), concurrency=1)])
    greedy = conformance.loadgen_headroom([ours(GreedyAdapter(url), concurrency=1)])
    assert greedy.observed is not None and lean.observed is not None
    assert not greedy.passed  # it is its own bottleneck: capacity ~ throughput
    assert lean.observed > greedy.observed
