"""A lean keep-alive HTTP/1.1 client on asyncio for the load generator.

A general client (httpx, aiohttp) spends several times the CPU per request of the server it
measures on a small model; this one writes a request prepared ahead of the run, parses the
response with httptools (C: status, Content-Length or chunked framing, keep-alive) and
keeps one timer per request, so the server, not the client, sets the pace.

A closed loop runs in the connections' own callbacks (`HttpJsonAdapter.drive`), as wrk's
does: when a response completes, the next request is written and then the response booked,
in the same callback, with no task, future or timer per request. A batching server answers
a whole batch at once, and the time the client takes to send the batch's requests again (16
of them at c16) adds to every cycle; at c1 the turnaround is in every round trip. Through a
task per caller a request cost 19 us of the generator's CPU, with callbacks 9 us (c16,
against a bare uvloop server on the other core).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np


class RequestFailed(Exception):
    """A request that did not succeed, and the kind of failure (`http_503`, `protocol`, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Recorder(Protocol):
    """Where a driven closed loop reports each request (suite.loadgen's recorder)."""

    def clock(self) -> float: ...

    def success(self, origin: float, finished: float | None = None) -> None: ...

    def error(self, exc: BaseException) -> None: ...


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; responses are parsed
    by httptools (llhttp, the parser uvicorn uses), so framing costs C time only. The
    outcome of the request in flight goes to `on_done(status, body)` or `on_error(exc)`."""

    def __init__(self) -> None:
        import httptools

        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parse_error = httptools.HttpParserError
        self.body: list[bytes] = []
        self.on_done: Callable[[int, bytes], None] | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(ConnectionResetError(f"connection closed mid-response ({exc})"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.parse_error as exc:
            self.reusable = False
            self._fail(RequestFailed("protocol", str(exc)))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        body, self.body = b"".join(self.body), []
        done, self.on_done, self.on_error = self.on_done, None, None
        if done is not None:
            done(self.parser.get_status_code(), body)

    def _fail(self, exc: BaseException) -> None:
        fail, self.on_done, self.on_error = self.on_error, None, None
        if fail is not None:
            fail(exc)

    def expire(self) -> None:
        """The request's deadline passed: fail it and drop the connection."""
        self.reusable = False  # before the failure is reported: nothing more is sent on it
        self._fail(TimeoutError("no complete response before the deadline"))
        self.close()

    def send(self, payload: bytes, on_done: Callable[[int, bytes], None],
             on_error: Callable[[BaseException], None]) -> None:
        assert self.transport is not None
        self.on_done, self.on_error = on_done, on_error
        self.transport.write(payload)

    async def request(self, payload: bytes, timeout_s: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        deadline = loop.call_later(timeout_s, self.expire)  # one timer, cheaper than asyncio.timeout

        def resolve(status: int, body: bytes) -> None:
            if not waiter.done():
                waiter.set_result((status, body))

        def reject(exc: BaseException) -> None:
            if not waiter.done():
                waiter.set_exception(exc)

        self.send(payload, resolve, reject)
        try:
            return await waiter
        finally:
            deadline.cancel()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class _Caller:
    """One closed-loop caller bound to one connection: each outcome is recorded and the
    next request written from the connection's callback; a failed connection is replaced."""

    def __init__(self, adapter: HttpJsonAdapter, prepared: Sequence[bytes], index: int, step: int,
                 recorder: Recorder, running: Callable[[], bool]) -> None:
        self.adapter, self.prepared, self.index, self.step = adapter, prepared, index, step
        self.recorder, self.running = recorder, running
        self.connection: _HttpConnection | None = None
        self.origin: float | None = None  # send time of the request in flight
        self.replacing: asyncio.Task[None] | None = None

    def send(self) -> None:
        assert self.connection is not None
        payload = self.prepared[self.index % len(self.prepared)]
        self.index += self.step
        self.origin = self.recorder.clock()
        self.connection.send(payload, self.done, self.failed)

    def done(self, status: int, body: bytes) -> None:
        finished, origin = self.recorder.clock(), self.origin
        assert origin is not None
        self.origin = None
        self.next()  # before the bookkeeping: at c1 the turnaround is in every round trip
        try:
            self.adapter.check(status, body)
        except Exception as exc:  # noqa: BLE001 - a failed request is counted by kind
            self.recorder.error(exc)
        else:
            self.recorder.success(origin, finished)

    def failed(self, exc: BaseException) -> None:
        self.origin = None
        self.recorder.error(exc)
        self.next()

    def next(self) -> None:
        assert self.connection is not None
        if not self.connection.reusable:
            self.connection.close()
            self.connection = None
            if self.running():
                self.replacing = asyncio.get_running_loop().create_task(self.connect())
        elif self.running():
            self.send()

    async def connect(self) -> None:
        """Take a connection and send; a failed connect counts as a failed request."""
        while self.running():
            try:
                self.connection = await self.adapter.connection()
            except Exception as exc:  # noqa: BLE001 - refused, timed out: counted, then tried again
                self.recorder.error(exc)
                continue
            self.send()
            return

    def expire_if_late(self, now: float) -> None:
        if self.origin is not None and self.connection is not None and now - self.origin > self.adapter.timeout_s:
            self.connection.expire()

    @property
    def busy(self) -> bool:
        return self.origin is not None or (self.replacing is not None and not self.replacing.done())


class HttpJsonAdapter:
    """POST a body to one URL over at most `max_connections` keep-alive connections (as wrk2
    does: more arrivals than connections wait for one, and that wait counts in their
    latency); a non-2xx status is a failure of kind `http_<status>`.

    A request is turned into the body by `encode` (JSON of `to_json(request)` unless given);
    `decode` turns a response body into the model outputs for conformance checks."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout_s: float = 30.0,
                 to_json: Callable[[Any], Any] | None = None, outputs_key: str = "outputs",
                 max_connections: int = 64, content_type: str = "application/json",
                 encode: Callable[[Any], bytes] | None = None,
                 decode: Callable[[bytes], np.ndarray] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"HttpJsonAdapter needs an http:// URL, got {url!r}")
        self.url = url
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = parts.path or "/"
        self.timeout_s = timeout_s
        to_json = to_json or (lambda request: request)
        self.encode: Callable[[Any], bytes] = encode or (lambda request: json.dumps(to_json(request)).encode())
        self._decode = decode or (lambda body: np.asarray(json.loads(body)[outputs_key], dtype=np.float64))
        extra = {"Content-Type": content_type, **(headers or {})}
        self._head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                      + "".join(f"{k}: {v}\r\n" for k, v in extra.items()))
        self.headers = extra
        self.max_connections = max_connections
        self._idle: list[_HttpConnection] = []
        self._slots: asyncio.Semaphore | None = None  # made in the running loop

    def prepare(self, request: Any) -> bytes:
        body = request if isinstance(request, bytes) else self.encode(request)
        return f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def connection(self) -> _HttpConnection:
        """An idle keep-alive connection, or a new one."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable and connection.transport is not None and not connection.transport.is_closing():
                return connection
        _, connection = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            _HttpConnection, self.host, self.port), self.timeout_s)
        return connection

    async def issue(self, prepared: bytes) -> bytes:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            connection = await self.connection()
            try:
                status, body = await connection.request(prepared, self.timeout_s)
            except BaseException:
                connection.close()  # a half-read response makes the connection useless
                raise
            if connection.reusable:
                self._idle.append(connection)
        return self.check(status, body)

    def check(self, status: int, body: bytes) -> bytes:
        """The body of a successful response; a non-2xx status is RequestFailed `http_<status>`."""
        if not 200 <= status < 300:
            raise RequestFailed(f"http_{status}", body[:200].decode(errors="replace"))
        return body

    async def drive(self, prepared: Sequence[bytes], concurrency: int, recorder: Recorder,
                    running: Callable[[], bool], tick_s: float = 0.01) -> None:
        """A closed loop of `concurrency` callers, one connection each, run from the
        connections' callbacks until `running()` turns false; returns once every request in
        flight has finished (or expired), with the connections back in the pool."""
        if not 1 <= concurrency <= self.max_connections:
            raise ValueError(f"a driven closed loop needs 1 to {self.max_connections} callers "
                             f"(max_connections), got {concurrency}")
        callers = [_Caller(self, prepared, k, concurrency, recorder, running) for k in range(concurrency)]
        for caller in callers:
            await caller.connect()
        try:
            while running() or any(caller.busy for caller in callers):
                await asyncio.sleep(tick_s)  # deadlines are checked here, not by a timer per request
                now = recorder.clock()
                for caller in callers:
                    caller.expire_if_late(now)
        finally:
            for caller in callers:
                if caller.replacing is not None:
                    caller.replacing.cancel()
                if caller.connection is None:
                    continue
                if caller.origin is None and caller.connection.reusable:
                    self._idle.append(caller.connection)
                else:
                    caller.connection.close()  # cancelled with a request in flight

    def outputs(self, response: bytes) -> np.ndarray:
        return self._decode(response)

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        self._slots = None
