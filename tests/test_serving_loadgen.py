"""The load generator (suite/loadgen.py): windows and the stability rule, closed and open
loops, coordinated omission, error kinds, goodput by search and the knee, the HdrHistogram
export, load windows as an interleaved contender, its HTTP client (suite/httpclient.py)
against a minimal server, and its validation against wrk and hey in interleaved rounds
(with planted slow and CPU-hungry generators that the checks must catch)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("httpx")

from reference.serving import conformance, external  # noqa: E402
from suite import loadgen, stats, timing  # noqa: E402
from suite.httpclient import HttpJsonAdapter  # noqa: E402
from suite.profiles import Budget  # noqa: E402

pytestmark = pytest.mark.serving


def window(throughput: float, p99: float, n: int = 100) -> loadgen.Window:
    """A 1-second window with n latencies whose 99th percentile is p99."""
    top = max(2, n // 50)
    latencies = [p99 * 0.5] * (n - top) + [p99] * top
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


def test_plateau_is_throughput_that_stopped_rising() -> None:
    def windows(*rates: float) -> list[loadgen.Window]:
        return [window(rate, 0.01) for rate in rates]

    assert not loadgen.plateaued(windows(400, 900, 1100, 1300, 1400, 1500), k=3)  # still climbing
    assert loadgen.plateaued(windows(400, 1100, 1120, 1150, 1130, 1110), k=3)
    assert loadgen.plateaued(windows(1000, 1000, 1000, 700, 650, 720), k=3)  # falling is not rising
    assert not loadgen.plateaued(windows(1000, 1000, 1000, 1000, 1000), k=3)  # five windows are too few
    # TorchServe's warm-up (1 s windows): a 6 s rest at ~1,200 req/s, then on to ~2,800
    torchserve = windows(363, 698, 1054, 1066, 1054, 1242, 1142, 1355, 1183, 1399, 1089)
    assert loadgen.plateaued(torchserve, k=3) and not loadgen.plateaued(torchserve)


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


class ColdStartAdapter(SleepyAdapter):
    """The first `cold` requests take `cold_s` (a server's first batch after idling), the
    rest `service_s`."""

    def __init__(self, service_s: float, cold: int, cold_s: float) -> None:
        super().__init__(service_s)
        self.cold, self.cold_s = cold, cold_s

    async def issue(self, prepared: Any) -> Any:
        if self.calls < self.cold:
            self.calls += 1
            await asyncio.sleep(self.cold_s)
            return prepared
        return await super().issue(prepared)


def test_a_ramped_window_opens_once_every_caller_was_answered() -> None:
    def first_window(ramp: int) -> loadgen.Window:
        policy = loadgen.WindowPolicy(duration_s=0.1, max_windows=3, warmup_s=0.0, ramp=ramp)
        started = time.perf_counter()
        result = loadgen.run(lambda: loadgen.closed_loop(ColdStartAdapter(0.002, 4, 0.06), [0], 4, policy, fixed=1))
        window = result.windows[0]
        assert (window.start - started > 0.05) == bool(ramp)  # libuv rounds timers to ms
        return window

    cold, ramped = first_window(0), first_window(4)
    assert ramped.throughput > 1.5 * cold.throughput  # the cold window counted 60 ms of pipeline fill


class BurstAdapter(SleepyAdapter):
    """A batching server in miniature: requests wait for the next burst, which fires
    `period_s` after the first request that wants it, and answers all of them."""

    def __init__(self, period_s: float) -> None:
        super().__init__(0.0)
        self.period_s = period_s
        self.bursts: list[float] = []
        self._next: asyncio.Future[None] | None = None

    async def issue(self, prepared: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._next is None or self._next.done():
            self._next = loop.create_future()
            loop.call_later(self.period_s, self._fire, self._next)
        await asyncio.shield(self._next)
        return prepared

    def _fire(self, burst: asyncio.Future[None]) -> None:
        self.bursts.append(time.perf_counter())
        burst.set_result(None)


def test_windows_of_a_bursty_server_measure_its_rate() -> None:
    """30 ms cycles in 0.1 s windows: a window cut between bursts would say 3 bursts per
    0.1 s (-10%); one closed at its last completion says the server's own rate."""
    adapter = BurstAdapter(0.03)
    policy = loadgen.WindowPolicy(duration_s=0.1, max_windows=6, warmup_s=0.0, ramp=4)
    result = loadgen.run(lambda: loadgen.closed_loop(adapter, [0], 4, policy, fixed=6))
    cycles = np.diff(adapter.bursts)
    served = 4 / float(np.mean(cycles))  # whatever the host did to the timer
    assert np.median([w.throughput for w in result.windows]) == pytest.approx(served, rel=0.04)


class WarmingAdapter(SleepyAdapter):
    """A JIT-compiled server in miniature: 20 ms per request at first, faster with every
    request until `service_s` after `cold` of them."""

    def __init__(self, service_s: float, cold: int) -> None:
        super().__init__(service_s)
        self.cold = cold

    async def issue(self, prepared: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.service_s + (0.02 - self.service_s) * max(0.0, 1 - self.calls / self.cold))
        return prepared


def test_warm_up_lasts_until_the_server_stops_speeding_up() -> None:
    with loadgen.LoadSession(lambda: WarmingAdapter(0.002, cold=100), [0]) as session:
        warm = session.warm_up(4, window_s=0.05, max_windows=40)
    rates = [w.throughput for w in warm.windows]
    assert warm.stable and 2 * loadgen.PLATEAU_WINDOWS <= len(rates) < 40
    assert np.median(rates[-3:]) > 3 * rates[0]  # it went on past the slow start


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


def test_meets_slo_needs_a_claimable_p99_within_the_slo_and_no_errors() -> None:
    big = loadgen.LoadResult("open", 300, [window(300, 0.01, n=loadgen.P99_FLOOR)] * 3, True, demand_s=0.1)
    assert loadgen.meets_slo(big, slo_p99_s=0.05)
    assert not loadgen.meets_slo(big, slo_p99_s=0.004)
    few = loadgen.LoadResult("open", 300, [window(300, 0.01, n=100)] * 3, True, demand_s=0.1)
    assert not loadgen.meets_slo(few, slo_p99_s=0.05)  # 300 samples cannot claim a p99
    shed = loadgen.LoadResult("open", 300, [window(300, 0.01, n=loadgen.P99_FLOOR)] * 3, True, demand_s=0.1)
    shed.windows[0].errors.update({"http_503": 50})
    assert not loadgen.meets_slo(shed, slo_p99_s=0.05)


def queueing_server(capacity: float) -> Any:
    """A probe of an M/M/1-like server: p99 stays low up to ~80% of capacity, then climbs."""

    def probe(rate: float) -> loadgen.LoadResult:
        load = min(rate / capacity, 0.999)
        p99 = 0.001 * 4.6 / (1 - load)
        flat = loadgen.Window(0.0, loadgen.P99_FLOOR / rate, [p99] * loadgen.P99_FLOOR, Counter())
        return loadgen.LoadResult("open", rate, [flat] * 3, True, demand_s=0.1)

    return probe


def test_goodput_search_finds_the_highest_rate_meeting_the_slo() -> None:
    """p99 = 4.6 ms / (1 - rate/1000) meets 50 ms up to rate ~908: bisection lands within 5%."""
    search = loadgen.search_goodput(queueing_server(1000.0), high=1200.0, slo_p99_s=0.05)
    assert 0.95 * 908 <= search.goodput <= 908
    assert len(search.probes) <= 10
    curve = search.curve()
    assert [p["offered"] for p in curve] == sorted(p["offered"] for p in curve)
    assert any(p["meets_slo"] for p in curve) and not all(p["meets_slo"] for p in curve)
    failed_twice = [p["offered"] for p in curve if not p["meets_slo"] and p["repeat"]]
    assert failed_twice and all(rate > 908 for rate in failed_twice)  # a rate fails on two probes in a row


def test_one_noisy_probe_does_not_cut_the_goodput() -> None:
    """A burst from another process spoils the first probe of some rate the server can take:
    the search probes that rate again instead of bringing its bracket down to it."""
    server, spoiled = queueing_server(1000.0), []

    def noisy(rate: float) -> loadgen.LoadResult:
        if rate < 908 and not spoiled:
            spoiled.append(rate)
            return result_at(rate, p99=0.2)
        return server(rate)

    search = loadgen.search_goodput(noisy, high=1200.0, slo_p99_s=0.05)
    assert spoiled and 0.95 * 908 <= search.goodput <= 908
    assert [r.level for r in search.probes].count(spoiled[0]) == 2


def test_interleaved_searches_take_turns_and_each_finds_its_own_goodput() -> None:
    order: list[str] = []

    def probe(name: str, capacity: float) -> Any:
        server = queueing_server(capacity)
        return lambda rate: order.append(name) or server(rate)

    searches = loadgen.search_interleaved({"fast": probe("fast", 2000.0), "slow": probe("slow", 1000.0)},
                                          {"fast": 2400.0, "slow": 1200.0}, slo_p99_s=0.05)
    assert 0.95 * 1816 <= searches["fast"].goodput <= 1816 and 0.95 * 908 <= searches["slow"].goodput <= 908
    turns = min(order.count("fast"), order.count("slow"))
    assert order[:2 * turns] == ["fast", "slow"] * turns


def test_goodput_search_raises_a_top_that_meets_the_slo_and_refuses_nonsense() -> None:
    """A closed loop of a few callers can leave a batching server's capacity unseen: a top
    that meets the SLO is raised until one fails, within the probe budget."""
    search = loadgen.search_goodput(queueing_server(1000.0), high=100.0, slo_p99_s=0.05)
    assert 0.9 * 908 <= search.goodput <= 908 and len(search.probes) <= 10
    assert [r.level for r in search.probes[:3]] == [100.0, 150.0, 225.0]
    assert loadgen.search_goodput(queueing_server(1000.0), high=500.0, slo_p99_s=0.001).goodput == 0.0
    with pytest.raises(ValueError, match="positive"):
        loadgen.search_goodput(queueing_server(1.0), high=0.0, slo_p99_s=0.05)


def test_knee_is_where_latency_turns_up() -> None:
    throughput = [100, 200, 300, 400, 500, 520, 530]
    latency = [1.0, 1.1, 1.2, 1.4, 2.0, 6.0, 20.0]
    assert loadgen.knee(throughput, latency) == 4  # 500 req/s, before latency explodes
    assert loadgen.knee(throughput[::-1], latency[::-1]) == 2  # order of the points does not matter
    assert loadgen.knee([1, 2], [1, 2]) is None
    assert loadgen.knee([1, 2, 3], [1, 2, 3]) is None  # a straight line has no knee


def test_hdr_export_round_trips_the_latencies() -> None:
    from hdrh.histogram import HdrHistogram

    latencies = list(np.random.default_rng(3).exponential(0.005, 5000))
    decoded = HdrHistogram.decode(loadgen.hdr_export(latencies))
    assert decoded.get_total_count() == 5000
    for q in (50, 99):
        assert decoded.get_value_at_percentile(q) / 1e6 == pytest.approx(np.percentile(latencies, q), rel=0.01)


def test_window_source_is_an_interleaved_contender() -> None:
    """Load windows timed beside an in-process callable by the one interleaving primitive:
    samples are seconds per request, so the served rate is 1 / their median."""
    budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=6, max_samples=6, max_time_s=0.1)
    with loadgen.LoadSession(lambda: SleepyAdapter(0.004), [0]) as session:
        served = session.window_source(4, 0.1)
        timed = timing.time_interleaved({"served": served, "raw": lambda n: [0.001] * n}, budget, self_timed=True)
    assert len(timed["served"].times) == 6 and len(served.windows(6)) == 6
    latencies = served.latencies(6)
    assert min(latencies) >= 0.003 and served.errors(6) == 0  # libuv timers are whole milliseconds
    # Little's law, whatever the host does to a 4 ms sleep: 4 callers over their mean latency
    assert 1 / np.median(timed["served"].times) == pytest.approx(4 / np.mean(latencies), rel=0.2)


def test_generator_and_server_get_separate_cpus() -> None:
    assert loadgen.split_cpus({0}) is None
    assert loadgen.split_cpus({3, 1, 2}) == ({1}, {2, 3})
    held = os.sched_getaffinity(0)
    with loadgen.pinned({min(held)}):
        assert os.sched_getaffinity(0) == {min(held)}
    assert os.sched_getaffinity(0) == held


def test_metrics_carry_units_and_flag_unclaimed_percentiles() -> None:
    found = {m.name: m for m in loadgen.metrics(result_at(100, 0.01), "c4_")}
    assert {"c4_throughput", "c4_latency", "c4_errors", "c4_loadgen_capacity", "c4_loadgen_cpu_per_request",
            "c4_stable"} <= set(found)
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
            elif path == "/hang":
                continue  # never answers: the client's deadline must end the request
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
    (503), /hang (no answer). Counts the connections it accepted."""

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
    adapter = HttpJsonAdapter(tiny_server.url(path))
    outputs = loadgen.run(lambda: loadgen.fetch_outputs(adapter, [{"x": 1}] * 5))
    assert [o.tolist() for o in outputs] == [[1.0, 2.0]] * 5
    expected_connections = 5 if path == "/close" else 1  # keep-alive reuses one connection
    assert tiny_server.connections == expected_connections


def test_http_adapter_caps_connections_and_reports_status_errors(tiny_server: TinyHttpServer) -> None:
    adapter = HttpJsonAdapter(tiny_server.url("/ok"), max_connections=3)
    policy = loadgen.WindowPolicy(count=30, max_windows=3, warmup_s=0.0)
    loadgen.run(lambda: loadgen.open_loop(adapter, [adapter.prepare({"x": 1})], 2000.0, policy))
    assert tiny_server.connections <= 3
    busy = HttpJsonAdapter(tiny_server.url("/busy"))
    with pytest.raises(loadgen.RequestFailed) as failure:
        loadgen.run(lambda: busy.issue(busy.prepare({"x": 1})))
    assert failure.value.kind == "http_503"


def driven(adapter: HttpJsonAdapter, concurrency: int, seconds: float = 0.3) -> loadgen.LoadResult:
    policy = loadgen.WindowPolicy(duration_s=seconds, max_windows=3, warmup_s=0.05)
    return loadgen.run(lambda: loadgen.closed_loop(adapter, [adapter.prepare({"x": 1})], concurrency, policy,
                                                   fixed=3))


def test_closed_loop_is_driven_by_the_connections_with_one_each(tiny_server: TinyHttpServer) -> None:
    adapter = HttpJsonAdapter(tiny_server.url("/ok"))
    assert isinstance(adapter, loadgen.Driven)
    policy = loadgen.WindowPolicy(duration_s=0.2, max_windows=3, warmup_s=0.0)
    with loadgen.LoadSession(lambda: adapter, [{"x": 1}]) as session:
        first = session.closed(5, policy, fixed=3)
        assert first.completed > 50 and not first.errors
        assert tiny_server.connections == 5
        again = session.closed(5, policy, fixed=3)
    assert again.completed > 50 and tiny_server.connections == 5  # the second loop reused the first's five


def test_driven_closed_loop_counts_failures_by_kind_and_keeps_going(tiny_server: TinyHttpServer) -> None:
    busy = driven(HttpJsonAdapter(tiny_server.url("/busy")), 3)
    assert busy.completed == 0 and busy.errors["http_503"] > 50
    assert tiny_server.connections == 3  # a 503 leaves the connection usable
    closing = driven(HttpJsonAdapter(tiny_server.url("/close")), 3)
    assert closing.completed > 20 and not closing.errors  # each closed connection was replaced
    assert tiny_server.connections > 3 + 20


def test_driven_closed_loop_expires_requests_that_get_no_answer(tiny_server: TinyHttpServer) -> None:
    import time

    start = time.perf_counter()
    hung = driven(HttpJsonAdapter(tiny_server.url("/hang"), timeout_s=0.1), 2, seconds=0.5)
    assert hung.completed == 0 and hung.errors["timeout"] >= 2
    assert time.perf_counter() - start < 0.05 + 3 * 0.5 + 1.0  # windows, then one deadline at most


class TickingRecorder(loadgen._Recorder):
    """A recorder whose clock ticks once per reading, and which notes the last tick at
    each booking: a booking after its request's next send sees that send's tick."""

    def __init__(self, stop_after: int) -> None:
        self.ticks = 0
        super().__init__(self.tick)
        self.stop_after, self.booked_at = stop_after, []

    def tick(self) -> float:
        self.ticks += 1
        return float(self.ticks)

    def success(self, origin: float, finished: float | None = None) -> None:
        super().success(origin, finished)
        self.booked_at.append(self.ticks)


def test_driven_caller_sends_the_next_request_before_booking_the_last(tiny_server: TinyHttpServer) -> None:
    """At c1 the generator's turnaround is in every round trip, and a server that sleeps
    between requests amplifies it (+10 us of turnaround cost 61 us per request against the
    reference server): the next request goes out first, then the last one is booked."""
    adapter = HttpJsonAdapter(tiny_server.url("/ok"))
    recorder = TickingRecorder(stop_after=20)
    loadgen.run(lambda: adapter.drive([adapter.prepare({"x": 1})], 1, recorder,
                                      lambda: len(recorder.events) < recorder.stop_after))
    finished = [end for end, _, kind in recorder.events if kind is None]
    assert len(finished) >= recorder.stop_after
    # every booking but the last (no next request once stopped) came after the next send's tick
    assert all(at == end + 1 for at, end in zip(recorder.booked_at[:-1], finished[:-1]))


def test_driven_closed_loop_refuses_more_callers_than_connections(tiny_server: TinyHttpServer) -> None:
    adapter = HttpJsonAdapter(tiny_server.url("/ok"), max_connections=2)
    with pytest.raises(ValueError, match="max_connections"):
        loadgen.run(lambda: adapter.drive([adapter.prepare({"x": 1})], 3, loadgen._Recorder(lambda: 0.0),
                                          lambda: True))


def test_http_adapter_refuses_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        HttpJsonAdapter("https://example.org/predict")


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
    wrk = external.parse_wrk(WRK_OUTPUT)
    assert (wrk.throughput, wrk.p50_s, wrk.non_2xx) == (2559.51, pytest.approx(5.87e-3), 3)
    hey = external.parse_hey(HEY_OUTPUT)
    assert (hey.throughput, hey.p50_s, hey.non_2xx) == (2104.3311, 0.0062, 11)
    with pytest.raises(ValueError, match="cannot read wrk"):
        external.parse_wrk("connection refused")


class SlowAdapter(HttpJsonAdapter):
    """Planted bug: a generator that blocks for 20 ms on every response before recording
    it (50 req/s at most, whatever the concurrency)."""

    def check(self, status: int, body: bytes) -> bytes:
        time.sleep(0.020)
        return super().check(status, body)


class GreedyAdapter(HttpJsonAdapter):
    """Planted bug: a generator that burns 3 ms of CPU per request."""

    def check(self, status: int, body: bytes) -> bytes:
        end = time.process_time() + 0.003
        while time.process_time() < end:
            pass
        return super().check(status, body)


def interleaved_ratio(adapter: HttpJsonAdapter, tool: str, url: str, rounds: int = 4) -> tuple[Any, Any]:
    """Ours (through `adapter`) and `tool` on the same endpoint, interleaved rounds of 1 s."""
    budget = Budget(warmup_calls=1, warmup_s=0.0, min_samples=rounds, max_samples=rounds, max_time_s=1.0)
    with loadgen.LoadSession(lambda: adapter, [{"x": 1}]) as session:
        ours = session.window_source(4, 1.0, ramp=False)  # as the scenario: cold, like the tool
        theirs = external.ExternalSource(tool, HttpJsonAdapter(url), {"x": 1}, 4, 1)
        timed = timing.time_interleaved({"ours": ours, tool: theirs}, budget, self_timed=True)
    ratio = stats.paired_ratio(f"ours_throughput_over_{tool}", timed[tool].times, timed["ours"].times)
    return ratio, theirs


@pytest.mark.slow
@pytest.mark.parametrize("tool", [
    pytest.param("wrk", marks=pytest.mark.breaks("loadgen.<quantity>_agrees_with_<tool>")),
    pytest.param("hey", marks=pytest.mark.breaks("loadgen.<quantity>_not_behind_<tool>")),
])
def test_external_tool_agreement_catches_a_slow_generator(tiny_server: TinyHttpServer, tool: str) -> None:
    import shutil

    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (apt-get install {tool})")
    url = tiny_server.url("/ok")
    ratio, theirs = interleaved_ratio(SlowAdapter(url), tool, url)
    assert all(r.throughput > 0 and r.non_2xx == 0 for r in theirs.results)
    assert len(theirs.results) == 1 + 4  # one warm-up run, then the rounds
    slow = conformance.agrees_with_external(ratio, tool, 4)
    assert not slow.passed  # 20 ms per request is far outside 10%, whatever the host load
    assert ratio.ci_high < 0.9 and "95% CI" in slow.detail and tool in slow.name


def test_agreement_check_reads_the_whole_ci() -> None:
    def ratio(low: float, value: float, high: float) -> Any:
        return stats.ratio_of_medians("ours_throughput_over_wrk", [1.0], [1.0]).model_copy(
            update={"value": value, "ci_low": low, "ci_high": high, "n": 30})

    assert conformance.agrees_with_external(ratio(0.95, 1.0, 1.04), "wrk", 16).passed
    unsettled = conformance.agrees_with_external(ratio(0.85, 0.97, 1.04), "wrk", 16)  # CI reaches 15% off
    assert unsettled.inconclusive and not unsettled.passed and not unsettled.failed
    # 30 rounds; the low arm (0.12) is 1.71 x the estimate's distance to 0.9: ~1.71^2 x 30 rounds in all
    assert "about 59 more samples would settle it" in unsettled.detail
    leaning_out = conformance.agrees_with_external(ratio(0.818, 0.893, 0.951), "wrk", 16)  # outside, CI reaches in
    assert leaning_out.inconclusive and "about 2030 more samples" in leaning_out.detail
    assert conformance.agrees_with_external(ratio(0.70, 0.80, 0.88), "wrk", 16).failed  # a disagreement shown
    assert conformance.agrees_with_external(ratio(1.12, 1.2, 1.3), "wrk", 16).failed
    named = conformance.agrees_with_external(ratio(0.95, 1.0, 1.04), "wrk", 16).name
    assert named == "loadgen.throughput_agrees_with_wrk"


def test_against_a_slower_tool_only_falling_behind_counts() -> None:
    """hey is slower itself at c1 (ours 1.23x its throughput): against it, ours ahead is
    fine and only ours behind fails, for throughput (low is worse) and p50 (high is)."""
    def ratio(name: str, low: float, value: float, high: float, higher_is_better: bool = True) -> Any:
        return stats.ratio_of_medians(name, [1.0], [1.0]).model_copy(
            update={"value": value, "ci_low": low, "ci_high": high, "n": 60, "higher_is_better": higher_is_better})

    ahead = conformance.agrees_with_external(ratio("ours_throughput_over_hey", 1.17, 1.23, 1.26), "hey", 1)
    assert ahead.passed and ahead.name == "loadgen.throughput_not_behind_hey"
    assert not conformance.agrees_with_external(ratio("ours_throughput_over_wrk", 1.17, 1.23, 1.26), "wrk", 1).passed
    assert conformance.agrees_with_external(ratio("ours_throughput_over_hey", 0.70, 0.75, 0.82), "hey", 1).failed
    edge = conformance.agrees_with_external(ratio("ours_throughput_over_hey", 0.85, 0.95, 1.02), "hey", 1)
    assert edge.inconclusive and "straddles 0.90" in edge.detail
    faster = ratio("ours_p50_over_hey", 0.75, 0.80, 0.86, higher_is_better=False)
    assert conformance.agrees_with_external(faster, "hey", 1).passed
    slower = ratio("ours_p50_over_hey", 1.15, 1.2, 1.3, higher_is_better=False)
    assert conformance.agrees_with_external(slower, "hey", 1).failed


def ours(adapter: HttpJsonAdapter, concurrency: int = 4) -> loadgen.LoadResult:
    policy = loadgen.WindowPolicy(duration_s=0.4, max_windows=3, warmup_s=0.1)
    return loadgen.run(lambda: loadgen.closed_loop(adapter, [adapter.prepare({"x": 1})], concurrency, policy))


@pytest.mark.breaks("loadgen.not_the_bottleneck")
def test_headroom_check_catches_a_cpu_hungry_generator(tiny_server: TinyHttpServer) -> None:
    url = tiny_server.url("/ok")
    lean_run, greedy_run = ours(HttpJsonAdapter(url), concurrency=1), ours(GreedyAdapter(url), concurrency=1)
    assert greedy_run.cpu_per_request >= 0.003 > lean_run.cpu_per_request  # its own CPU per request, measured
    lean, greedy = conformance.loadgen_headroom([lean_run]), conformance.loadgen_headroom([greedy_run])
    assert greedy.observed is not None and lean.observed is not None
    assert not greedy.passed  # it is its own bottleneck: capacity ~ throughput
    assert lean.observed > greedy.observed


def test_probe_windows_hold_enough_samples_for_a_p99_and_stay_bounded() -> None:
    base = loadgen.WindowPolicy(duration_s=0.1, max_windows=5, warmup_s=0.1)
    fast = loadgen.probe_policy(2000.0, base)
    assert fast.duration_s is not None and 2000.0 * fast.duration_s * fast.max_windows >= loadgen.P99_FLOOR
    slow = loadgen.probe_policy(10.0, base)
    assert slow.duration_s == loadgen.MAX_PROBE_WINDOW_S and slow.max_windows == loadgen.STABILITY_WINDOWS


def test_a_load_session_freezes_what_exists_before_the_load() -> None:
    """The generator's process holds torch and the harness: a full collection of that
    paused it for ~100 ms, in the latency of every request due meanwhile."""
    import gc

    gc.unfreeze()
    with loadgen.LoadSession(lambda: SleepyAdapter(0.001), [0]):
        assert gc.get_freeze_count() > 1_000
