"""Real TorchServe serving the same TorchScript model: a .mar built with
`torch-model-archiver` around `torchserve_handler.py`, a `config.properties` that binds the
inference, management and metrics APIs (and the gRPC ones) to 127.0.0.1, token authorisation left on (clients
send the inference key TorchServe writes to `key_file.json`), and batching configured
per model (`batchSize`, `maxBatchDelay`).

Everything lives in one work directory, TEMP/TMPDIR included, so TorchServe's pid file and
worker sockets do not collide with another instance on the same machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from reference.ports import free_ports
from reference.serving.process import ManagedServer, ServerFailed, http_ok, with_threads

MODEL_NAME = "digits"
HANDLER = Path(__file__).with_name("torchserve_handler.py")


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ServerFailed(f"{name} is not installed (pip install torchserve torch-model-archiver)")
    return found


def archive(version_dir: Path, store: Path, threads: int) -> Path:
    """Package the version's TorchScript file and the handler into `<store>/digits.mar`."""
    meta = json.loads((version_dir / "meta.json").read_text())
    if meta["format"] != "torchscript":
        raise ValueError(f"TorchServe serves the TorchScript version; {version_dir} holds {meta['format']}")
    store.mkdir(parents=True, exist_ok=True)
    setup = store.parent / "setup_config.json"
    setup.write_text(json.dumps({"threads": threads, "in_features": meta["in_features"], "model_file": meta["file"]}))
    done = subprocess.run(
        [_tool("torch-model-archiver"), "--model-name", MODEL_NAME, "--version", "1.0",
         "--serialized-file", str(version_dir / meta["file"]), "--handler", str(HANDLER),
         "--extra-files", str(setup), "--export-path", str(store), "--force"],
        capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ServerFailed(f"torch-model-archiver failed: {done.stderr[-1500:]}")
    return store / f"{MODEL_NAME}.mar"


def write_config(workdir: Path, store: Path, ports: list[int], batch_size: int,
                 max_batch_delay_ms: int, max_request_bytes: int) -> Path:
    """config.properties: the REST APIs and the two gRPC APIs on loopback, each on its own
    port (the gRPC defaults, 7070/7071, would collide between instances)."""
    inference, management, metrics, grpc_inference, grpc_management = ports
    model = {MODEL_NAME: {"1.0": {"defaultVersion": True, "marName": f"{MODEL_NAME}.mar", "minWorkers": 1,
                                  "maxWorkers": 1, "batchSize": batch_size, "maxBatchDelay": max_batch_delay_ms,
                                  "responseTimeout": 60}}}
    lines = [
        f"inference_address=http://127.0.0.1:{inference}",
        f"management_address=http://127.0.0.1:{management}",
        f"metrics_address=http://127.0.0.1:{metrics}",
        "grpc_inference_address=127.0.0.1",
        f"grpc_inference_port={grpc_inference}",
        "grpc_management_address=127.0.0.1",
        f"grpc_management_port={grpc_management}",
        f"model_store={store}",
        f"load_models={MODEL_NAME}.mar",
        f"models={json.dumps(model)}",
        "metrics_mode=prometheus",
        "default_workers_per_model=1",
        f"max_request_size={max_request_bytes}",
        "install_py_dep_per_model=false",
        "enable_envvars_config=false",
    ]
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class TorchServeEndpoint:
    inference_url: str
    management_url: str
    metrics_url: str
    workdir: Path
    server: ManagedServer
    ready_s: float

    @property
    def token(self) -> str | None:
        return inference_token(self.workdir)

    @property
    def predict_url(self) -> str:
        return f"{self.inference_url}/predictions/{MODEL_NAME}"


def _keys(workdir: Path) -> dict[str, dict[str, str]]:
    path = workdir / "key_file.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def inference_token(workdir: Path) -> str | None:
    return _keys(workdir).get("inference", {}).get("key")


def _model_ready(management_url: str, workdir: Path) -> bool:
    """The model's worker is up: the management API (with its own key) says READY."""
    import urllib.request

    key = _keys(workdir).get("management", {}).get("key")
    if key is None:
        return False
    request = urllib.request.Request(f"{management_url}/models/{MODEL_NAME}",
                                     headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:
            described = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return any(w.get("status") == "READY" for m in described for w in m.get("workers", []))


def start_torchserve(version_dir: Path, workdir: Path, *, batch_size: int = 8, max_batch_delay_ms: int = 5,
                     threads: int = 1, max_request_bytes: int = 1 << 20,
                     timeout_s: float = 120.0, cpus: set[int] | None = None) -> TorchServeEndpoint:
    """Archive, configure and start TorchServe; returns once the model's worker is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "model-store"
    archive(version_dir, store, threads)
    ports = free_ports(5)
    config = write_config(workdir, store, ports, batch_size, max_batch_delay_ms, max_request_bytes)
    env = with_threads({**os.environ, "TEMP": str(workdir), "TMPDIR": str(workdir)}, threads)
    urls = [f"http://127.0.0.1:{p}" for p in ports[:3]]
    command = [_tool("torchserve"), "--start", "--foreground", "--ts-config", str(config),
               "--model-store", str(store), "--ncs"]
    server = ManagedServer("torchserve", command, workdir / "torchserve.log", env=env, cwd=workdir,
                           fatal_log_lines=("Failed to load model", "Load model failed"), cpus=cpus,
                           ready=lambda: _model_ready(urls[1], workdir) and http_ok(
                               f"{urls[0]}/ping", {"Authorization": f"Bearer {inference_token(workdir)}"}))
    ready_s = server.start(timeout_s)
    return TorchServeEndpoint(urls[0], urls[1], urls[2], workdir, server, ready_s)
