"""Run the reference server under uvicorn: `python -m reference.serving.server --model-root DIR`.

Binds 127.0.0.1 unless told otherwise. On SIGTERM/SIGINT the server reports not-ready at
once, stops accepting connections, lets in-flight requests finish (up to
`--drain-timeout-s`) and then drains the batchers in the lifespan shutdown.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch
    import uvicorn

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings(model_root=args.model_root, default_version=args.version, cache_size=args.cache_size,
                        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                        max_pending=args.max_pending, max_body_bytes=args.max_body_bytes,
                        warmup=not args.no_warmup, threads=args.threads)
    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True  # /readyz says 503 from the first signal on
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=args.drain_timeout_s, backlog=4096, proxy_headers=False,
                            server_header=False, date_header=False)
    print(f"serving {args.model_root} on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    DrainingServer(config).run()


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
          extra_args: tuple[str, ...] = (), timeout_s: float = 60.0,
          cpus: set[int] | None = None) -> FastApiEndpoint:
    """Start the reference server as a real uvicorn process on a free loopback port;
    returns once /readyz says ready (model loaded and warmed up)."""
    port = free_port()
    command = [sys.executable, "-m", "reference.serving.server", "--model-root", str(model_root),
               "--version", version, "--port", str(port), "--max-batch-size", str(max_batch_size),
               "--max-queue-delay-ms", str(max_queue_delay_ms), "--max-pending", str(max_pending),
               "--threads", str(threads), *(() if warmup else ("--no-warmup",)), *extra_args]
    env = with_threads({**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}, threads)
    base = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    server = ManagedServer("fastapi", command, workdir / f"fastapi-{port}.log", env=env,
                           ready=lambda: http_ok(f"{base}/readyz"), cpus=cpus)
    return FastApiEndpoint(base, server, server.start(timeout_s))


if __name__ == "__main__":
    main()
