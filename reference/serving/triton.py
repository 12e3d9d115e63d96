"""Real Triton Inference Server serving the same TorchScript model through its Python backend.

The `tritonserver` binary (2.51, with the Python backend) ships inside the
`nvidia-pytriton` wheel, which pins numpy<2; so it gets a virtualenv of its own, built on
demand under `~/.cache/mlsuite/triton-venv` (override with MLSUITE_TRITON_VENV) from the
interpreter this one was made from. Two facts make the backend stub work with a pyenv-style
interpreter: its lib directory goes first in LD_LIBRARY_PATH (else the stub loads the
system libpython), and the venv's bin directory goes first in PATH (the embedded
interpreter finds its prefix, and so numpy<2, through `python` on PATH).

The model repository is the classic one: `config.pbtxt` with `max_batch_size`,
`dynamic_batching` (preferred batch sizes, max queue delay), `instance_group` and
`model_warmup`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reference.ports import free_ports
from reference.serving.process import ManagedServer, ServerFailed, http_ok, with_threads

MODEL_NAME, INPUT_NAME, OUTPUT_NAME = "digits", "INPUT", "OUTPUT"
PACKAGES = ("nvidia-pytriton", "numpy<2")
MODEL_CODE = Path(__file__).with_name("triton_model.py")
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def default_venv() -> Path:
    return Path(os.environ.get("MLSUITE_TRITON_VENV", Path.home() / ".cache" / "mlsuite" / "triton-venv"))


@dataclass(frozen=True)
class TritonInstall:
    venv: Path

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{PY_VERSION}" / "site-packages"

    @property
    def dist(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def server(self) -> Path:
        return self.dist / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        """Backends with the stub for this Python version in place (made by `ensure`)."""
        return self.venv / "mlsuite-backends"

    def env(self, threads: int) -> dict[str, str]:
        libdirs = [sysconfig.get_config_var("LIBDIR"), str(self.site_packages / "nvidia_pytriton.libs"),
                   os.environ.get("LD_LIBRARY_PATH", "")]
        return with_threads({**os.environ, "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                             "LD_LIBRARY_PATH": os.pathsep.join(d for d in libdirs if d)}, threads)


def base_python() -> Path:
    """The interpreter this one (or its venv) was made from: the stub embeds its libpython."""
    return Path(sys.base_prefix) / "bin" / f"python{PY_VERSION}"


def _run(command: Sequence[str], what: str, timeout_s: float) -> None:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ServerFailed(f"{what} took longer than {timeout_s:.0f}s") from None
    if done.returncode != 0:
        raise ServerFailed(f"{what} failed: {(done.stderr or done.stdout)[-1500:]}")


def ensure(venv: Path | None = None, timeout_s: float = 900.0) -> TritonInstall:
    """The Triton virtualenv, built the first time (under a file lock, so parallel callers
    wait for one build)."""
    install = TritonInstall(venv or default_venv())
    try:
        install.venv.parent.mkdir(parents=True, exist_ok=True)
        with open(install.venv.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _build(install, timeout_s)
    except OSError as exc:
        raise ServerFailed(f"cannot prepare the Triton virtualenv at {install.venv}: {exc}") from None
    return install


def _build(install: TritonInstall, timeout_s: float) -> None:
    marker = install.venv / ".mlsuite-complete"
    if marker.exists():
        return
    if not (install.venv / "bin" / "python").exists():
        _run([str(base_python()), "-m", "venv", str(install.venv)], "creating the Triton virtualenv", 300)
    _run([str(install.venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *PACKAGES],
         f"pip install {' '.join(PACKAGES)} into {install.venv}", timeout_s)
    stub = install.dist / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerFailed(f"nvidia-pytriton ships no Python backend stub for Python {PY_VERSION}")
    shutil.rmtree(install.backends, ignore_errors=True)
    shutil.copytree(install.dist / "backends", install.backends)
    shutil.copy2(stub, install.backends / "python" / "triton_python_backend_stub")
    marker.write_text(" ".join(PACKAGES) + "\n")


def torch_site_packages() -> str:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ServerFailed("torch is not installed for this interpreter")
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


def model_config(*, max_batch_size: int, dynamic_batching: bool, preferred_batch_sizes: Sequence[int],
                 max_queue_delay_us: int, threads: int, model_file: str, site_packages: str,
                 in_features: int, classes: int) -> str:
    """config.pbtxt for the digits model."""
    parameters = {"site_packages": site_packages, "threads": str(threads), "model_file": model_file}
    lines = [
        f'name: "{MODEL_NAME}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        f'input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ {in_features} ] }} ]',
        f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {classes} ] }} ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    if dynamic_batching:
        sizes = ", ".join(str(s) for s in preferred_batch_sizes if s <= max_batch_size)
        lines.append(f"dynamic_batching {{ preferred_batch_size: [ {sizes} ] "
                     f"max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items()]
    lines.append(f'model_warmup [ {{ name: "zeros" batch_size: 1 inputs {{ key: "{INPUT_NAME}" '
                 f"value: {{ data_type: TYPE_FP32 dims: [ {in_features} ] zero_data: true }} }} }} ]")
    return "\n".join(lines) + "\n"


def write_repository(version_dir: Path, repository: Path, *, max_batch_size: int, dynamic_batching: bool,
                     preferred_batch_sizes: Sequence[int], max_queue_delay_us: int, threads: int,
                     site_packages: str) -> Path:
    import json

    meta = json.loads((version_dir / "meta.json").read_text())
    if meta["format"] != "torchscript":
        raise ValueError(f"Triton serves the TorchScript version; {version_dir} holds {meta['format']}")
    version = repository / MODEL_NAME / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(version_dir / meta["file"], version / meta["file"])
    shutil.copy2(MODEL_CODE, version / "model.py")
    (repository / MODEL_NAME / "config.pbtxt").write_text(model_config(
        max_batch_size=max_batch_size, dynamic_batching=dynamic_batching,
        preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us, threads=threads,
        model_file=meta["file"], site_packages=site_packages, in_features=meta["in_features"],
        classes=meta["classes"]))
    return repository


@dataclass
class TritonEndpoint:
    http_address: str  # host:port, as tritonclient wants it
    grpc_address: str
    metrics_url: str
    server: ManagedServer
    ready_s: float

    @property
    def infer_url(self) -> str:
        return f"http://{self.http_address}/v2/models/{MODEL_NAME}/infer"


def start_triton(version_dir: Path, workdir: Path, *, max_batch_size: int = 16, dynamic_batching: bool = True,
                 preferred_batch_sizes: Sequence[int] = (4, 8, 16), max_queue_delay_us: int = 2000,
                 threads: int = 1, install: TritonInstall | None = None, timeout_s: float = 90.0,
                 cpus: set[int] | None = None) -> TritonEndpoint:
    """Write the model repository and start tritonserver on loopback; returns when the
    model is ready. Stopped with SIGTERM (Triton drains in-flight requests)."""
    install = install or ensure()
    repository = write_repository(version_dir, workdir / "model-repository", max_batch_size=max_batch_size,
                                  dynamic_batching=dynamic_batching, preferred_batch_sizes=preferred_batch_sizes,
                                  max_queue_delay_us=max_queue_delay_us, threads=threads,
                                  site_packages=torch_site_packages())
    http, grpc, metrics = free_ports(3)
    command = [str(install.server), f"--model-repository={repository}", f"--backend-directory={install.backends}",
               "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--metrics-address=127.0.0.1", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
               "--exit-timeout-secs=10", "--log-verbose=0",
               f"--backend-config=python,shm-region-prefix-name=mlsuite_{os.getpid()}_{http}_"]
    base = f"http://127.0.0.1:{http}"
    server = ManagedServer("tritonserver", command, workdir / "tritonserver.log", env=install.env(threads),
                           cwd=workdir, ready=lambda: http_ok(f"{base}/v2/models/{MODEL_NAME}/ready"), cpus=cpus)
    ready_s = server.start(timeout_s)
    return TritonEndpoint(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics",
                          server, ready_s)


if __name__ == "__main__":  # pre-build the virtualenv (CI caches ~/.cache/mlsuite): python -m reference.serving.triton
    print(ensure().venv)
