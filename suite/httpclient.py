"""A lean keep-alive HTTP/1.1 client on asyncio for the load generator.

A general client (httpx, aiohttp) spends several times the CPU per request of the server it
measures on a small model; this one writes a request prepared ahead of the run and parses
only what it must of the response (status line, Content-Length or chunked encoding,
`Connection: close`), so the server, not the client, sets the pace.
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
    """One keep-alive connection with at most one request in flight."""

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
            body, consumed = dechunk(self.buffer, start)
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


def dechunk(buffer: bytearray, start: int) -> tuple[bytes | None, int]:
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
        return self._decode(response)

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        self._slots = None
