"""Free loopback ports, for servers and launchers that must be told theirs. Standard
library only.

Another process may still take a port between the choice and the server's bind; only the
server binding port 0 itself avoids that, and few of them can report the port back."""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports free right now. Every socket is held until all are chosen: a
    port released by one bind can come back from the next, and a server given one port for
    two of its components refuses to start (Ray's metrics exporter once got its GCS port)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]
