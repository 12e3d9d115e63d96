"""Run the reference server under uvicorn: `python -m reference.serving.server --model-root DIR`.

Binds 127.0.0.1 unless told otherwise. On SIGTERM/SIGINT the server reports not-ready at
once, stops accepting connections, lets in-flight requests finish (up to
`--drain-timeout-s`) and then drains the batchers in the lifespan shutdown.

`--workers N` serves the port from N processes, each with its own model copy and batchers
(one Python process uses about one core): the parent binds the socket, starts the workers,
which warm up and then start accepting together, forwards SIGTERM/SIGINT to them and waits
for their drains. Prometheus runs in multiprocess mode, so a scrape adds up every worker's
counts. A worker that dies stops the others: the server exits 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from reference.ports import free_port
from reference.serving.app import Settings, create_app
from reference.serving.process import ManagedServer, http_ok, with_threads

REPO_ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-root", type=Path, required=True, help="directory of version folders")
    parser.add_argument("--version", default="1", help="default model version, loaded and warmed at start")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=16, help="1 turns dynamic batching off")
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--max-pending", type=int, default=512, help="queue bound; beyond it 503")
    parser.add_argument("--cache-size", type=int, default=2, help="model versions held at once")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--drain-timeout-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="processes serving the port, each with its batchers")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"serving {args.model_root} on http://{args.host}:{args.port} with {args.workers} worker(s) "
          f"(pid {os.getpid()})", flush=True)
    if args.workers == 1:
        serve(args)
    else:
        sys.exit(run_workers(args))


def serve(args: argparse.Namespace, sockets: list[socket.socket] | None = None,
          warmed: Callable[[], object] | None = None) -> None:
    """One server process: the app under uvicorn, on `sockets` when a parent bound them."""
    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    settings = Settings(model_root=args.model_root, default_version=args.version, cache_size=args.cache_size,
                        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                        max_pending=args.max_pending, max_body_bytes=args.max_body_bytes,
                        warmup=not args.no_warmup, threads=args.threads)
    app = create_app(settings, warmed=warmed)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True  # /readyz says 503 from the first signal on
            super().handle_exit(sig, frame)

    DrainingServer(uvicorn_config(args, app)).run(sockets=sockets)


def uvicorn_config(args: argparse.Namespace, app: Any = None) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=args.drain_timeout_s, backlog=4096, proxy_headers=False,
                          server_header=False, date_header=False)


def run_workers(args: argparse.Namespace) -> int:
    """Serve from `args.workers` processes; returns the exit code (0 after a signal, 1 when a
    worker died)."""
    from prometheus_client import multiprocess

    shared = tempfile.mkdtemp(prefix="mlsuite-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # read by each worker's prometheus_client at import
    listening = uvicorn_config(args).bind_socket()
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    all_warm = spawn.Barrier(args.workers, timeout=args.drain_timeout_s + 120)
    workers = [spawn.Process(target=serve, args=(args, [listening], all_warm.wait), name=f"worker-{i}")
               for i in range(args.workers)]
    signalled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _: signalled.append(number))
    try:
        for worker in workers:
            worker.start()
        while not signalled and all(worker.is_alive() for worker in workers):
            wait([worker.sentinel for worker in workers], timeout=0.2)
    finally:
        all_warm.abort()  # a worker still warming up stops waiting for one that died
        started = [worker for worker in workers if worker.pid is not None]
        for worker in started:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for worker in started:
            worker.join(args.drain_timeout_s + 5)
            if worker.is_alive():
                worker.kill()
                worker.join()
            multiprocess.mark_process_dead(worker.pid, shared)
        listening.close()
        shutil.rmtree(shared, ignore_errors=True)
    return 0 if signalled else 1


@dataclass
class FastApiEndpoint:
    base_url: str
    server: ManagedServer
    ready_s: float

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"


def start(model_root: Path, workdir: Path, *, version: str = "1", max_batch_size: int = 16,
          max_queue_delay_ms: float = 2.0, max_pending: int = 512, warmup: bool = True, threads: int = 1,
          workers: int = 1, extra_args: tuple[str, ...] = (), timeout_s: float = 60.0,
          cpus: set[int] | None = None) -> FastApiEndpoint:
    """Start the reference server as a real uvicorn process on a free loopback port;
    returns once /readyz says ready (model loaded and warmed up)."""
    port = free_port()
    command = [sys.executable, "-m", "reference.serving.server", "--model-root", str(model_root),
               "--version", version, "--port", str(port), "--max-batch-size", str(max_batch_size),
               "--max-queue-delay-ms", str(max_queue_delay_ms), "--max-pending", str(max_pending),
               "--threads", str(threads), "--workers", str(workers), *(() if warmup else ("--no-warmup",)),
               *extra_args]
    env = with_threads({**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}, threads)
    base = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    server = ManagedServer("fastapi", command, workdir / f"fastapi-{port}.log", env=env,
                           ready=lambda: http_ok(f"{base}/readyz"), cpus=cpus)
    return FastApiEndpoint(base, server, server.start(timeout_s))


if __name__ == "__main__":
    main()
