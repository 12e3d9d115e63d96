"""A lean keep-alive HTTP/1.1 client on asyncio for the load generator.

A general client (httpx, aiohttp) spends several times the CPU per request of the server it
measures on a small model; this one writes a request prepared ahead of the run, parses the
response with httptools (C: status, Content-Length or chunked framing, keep-alive) and
keeps one timer per request, so the server, not the client, sets the pace.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np


class RequestFailed(Exception):
    """A request that did not succeed, and the kind of failure (`http_503`, `protocol`, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; responses are parsed
    by httptools (llhttp, the parser uvicorn uses), so framing costs C time only."""

    def __init__(self) -> None:
        import httptools

        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parse_error = httptools.HttpParserError
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
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
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def expire(self) -> None:
        """The request's deadline passed: fail it and drop the connection."""
        self._fail(TimeoutError("no complete response before the deadline"))
        self.close()

    async def request(self, payload: bytes, timeout_s: float) -> tuple[int, bytes]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        deadline = loop.call_later(timeout_s, self.expire)  # one timer, cheaper than asyncio.timeout
        self.transport.write(payload)
        try:
            return await self.waiter
        finally:
            deadline.cancel()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


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

    async def _connection(self) -> _HttpConnection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
        _, connection = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            _HttpConnection, self.host, self.port), self.timeout_s)
        return connection

    async def issue(self, prepared: bytes) -> bytes:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            connection = await self._connection()
            try:
                status, body = await connection.request(prepared, self.timeout_s)
            except BaseException:
                connection.close()  # a half-read response makes the connection useless
                raise
            if connection.reusable:
                self._idle.append(connection)
        if not 200 <= status < 300:
            raise RequestFailed(f"http_{status}", body[:200].decode(errors="replace"))
        return body

    def outputs(self, response: bytes) -> np.ndarray:
        return self._decode(response)

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        self._slots = None
