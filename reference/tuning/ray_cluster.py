"""A real Ray cluster on one machine: `ray start --head` and worker nodes that join it with
`ray start --address=...`, each with a bounded number of CPUs, as on separate hosts.

Every node runs `ray start --block` as our child (in our process group, so a harness that
kills the group kills the cluster) under a private `--temp-dir`. Never `ray stop`: it stops
every Ray process of the machine, other users' clusters included. On exit the driver
disconnects, each node is sent SIGTERM (Ray drains it and stops its processes), and
anything still running from the private temp dir is reaped and counted.

Ray itself decides where its servers listen: `--node-ip-address=127.0.0.1` names the
address nodes use to reach each other, but Ray 2.60's GCS and raylets bind every interface
(recorded by `listening_addresses`, not configurable from the CLI).

    ray start --head --port=6379 --num-cpus=4           # on the head host
    ray start --address=HEAD:6379 --num-cpus=4          # on each worker host
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import ray

from reference import lifeline
from reference.lifeline import preexec
from reference.ports import LOOPBACK, free_ports
from reference.tuning.ray_tune import _reap, _session_processes

START_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 45.0  # Ray drains a node for up to 30 s on SIGTERM
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # per node: the trials pass no large objects
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass
class LoopbackCluster:
    address: str
    session_root: Path
    cpus_per_node: int
    head_s: float = 0.0  # `ray start --head` until its GCS accepts connections
    start_s: float = 0.0  # until every node is alive and the driver is connected
    node_ids: list[str] = field(default_factory=list)  # head first
    reaped: int = 0  # processes still alive after the nodes were stopped


def _ray_start(*args: str, cpus: int, root: Path, ports: list[int]) -> list[str]:
    """A `ray start` command line; `ports`: its dashboard agent's and its metrics exporter's."""
    agent, metrics = ports
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--node-ip-address={LOOPBACK}",
            f"--num-cpus={cpus}", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--temp-dir={root}", f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
            *args]


def _wait_for(condition: Any, what: str, nodes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        dead = [log for node, log in zip(nodes, logs, strict=True) if node.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace")[-1500:] for log in (dead or logs))
            raise RuntimeError(f"Ray cluster: {what} {'failed' if dead else 'timed out'}: {tail}")
        time.sleep(0.2)


def _gcs_up(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
        return True
    except OSError:
        return False


def _stop(node: subprocess.Popen[bytes]) -> None:
    lifeline.stop(node, signal.SIGTERM, DRAIN_TIMEOUT_S)


@contextmanager
def token_auth(token: str) -> Iterator[None]:
    """Ray's token authentication with this cluster's own token, for every node started
    meanwhile and for this driver. Ray 2.60 turns token auth on by itself whenever
    ~/.ray/auth_token exists (any earlier local ray.init() writes one), and a node or driver
    that disagrees about it cannot join; a token of our own removes the guesswork and keeps
    strangers off a cluster that listens on every interface."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    saved = {name: os.environ.get(name) for name in AUTH_VARIABLES}

    def reload() -> None:  # Ray caches the mode and the token per process
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    reload()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload()


def alive_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def head_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]


@contextmanager
def loopback_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[LoopbackCluster]:
    """A head and `nodes - 1` workers on 127.0.0.1, this process connected as the driver."""
    if nodes < 1 or cpus_per_node < 1:
        raise ValueError(f"need nodes >= 1 and cpus_per_node >= 1, got {nodes} and {cpus_per_node}")
    if ray.is_initialized():
        raise RuntimeError("this process is already connected to a Ray cluster; refusing to share it")
    root = Path(tempfile.mkdtemp(prefix="mlsuite-rayc-"))  # short: Ray's socket paths are length-limited
    port, *head_ports = free_ports(3)
    cluster = LoopbackCluster(address=f"{LOOPBACK}:{port}", session_root=root, cpus_per_node=cpus_per_node)
    started: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def launch(command: list[str], name: str) -> None:
        logs.append(root / f"{name}.log")
        with logs[-1].open("wb") as sink:
            started.append(subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=root,
                                            preexec_fn=preexec()))

    began = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(token_auth(secrets.token_hex(32)))
        stack.callback(_stop_all, started, root, cluster)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        launch(_ray_start("--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats",
                          cpus=cpus_per_node, root=root, ports=head_ports), "head")
        _wait_for(lambda: _gcs_up(port), "head start", started, logs)
        cluster.head_s = time.perf_counter() - began
        for index in range(1, nodes):
            launch(_ray_start(f"--address={cluster.address}", cpus=cpus_per_node, root=root, ports=free_ports(2)),
                   f"worker{index}")
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        _wait_for(lambda: len(alive_nodes()) == nodes, f"{nodes} nodes joining", started, logs)
        cluster.start_s = time.perf_counter() - began
        cluster.node_ids = sorted(alive_nodes(), key=lambda n: n not in head_nodes())
        yield cluster


def _stop_all(started: list[subprocess.Popen[bytes]], root: Path, cluster: LoopbackCluster) -> None:
    ray.shutdown()
    for node in reversed(started):  # workers first, the head (GCS) last
        _stop(node)
    cluster.reaped = _reap(root)
    shutil.rmtree(root, ignore_errors=True)


def listening_addresses(session_root: Path) -> set[str]:
    """The local addresses the cluster's processes listen on (for the record)."""
    pids = {p.pid for p in _session_processes(session_root)}
    return {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids}
