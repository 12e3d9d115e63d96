"""The environment fingerprint recorded with every result, and the git state of the code."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from suite import host
from suite.schema import Environment, Git, comparable_machine_id

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def host_id() -> str:
    """Which box (stable per machine, not per boot): a hash of /etc/machine-id, hostname as
    fallback. Not what makes numbers comparable: containers share it across different hosts."""
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        if path.exists() and (text := path.read_text().strip()):
            return hashlib.sha256(text.encode()).hexdigest()[:16]
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def family_packages() -> dict[str, str]:
    """Installed versions of everything mlsuite's extras name, read from its own metadata,
    so the list never drifts from pyproject.toml."""
    names = {"mlsuite", "torch", "numpy", "pydantic"}
    try:
        for requirement in importlib.metadata.requires("mlsuite") or []:
            names.add(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])
    except importlib.metadata.PackageNotFoundError:
        pass
    versions = {}
    for name in sorted(names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def gpu_details() -> dict[str, str | None]:
    details: dict[str, str | None] = {"gpu_name": None, "gpu_driver": None, "cuda": None}
    try:
        import torch
    except ImportError:
        return details
    if not torch.cuda.is_available():
        return details
    details["gpu_name"] = torch.cuda.get_device_name(0)
    details["cuda"] = torch.version.cuda
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
        details["gpu_driver"] = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return details


def thread_settings(import_torch: bool = True) -> dict[str, Any]:
    """The thread variables and torch's thread counts; without `import_torch`, torch's only
    if this process has imported it (a worker that never used torch has none to report)."""
    settings: dict[str, Any] = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    if not import_torch and "torch" not in sys.modules:
        return settings
    try:
        import torch

        settings["torch_intra_op"] = torch.get_num_threads()
        settings["torch_inter_op"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    return settings


def fingerprint(seed: int) -> Environment:
    cores, model, ram, gpu, quota = os.cpu_count() or 1, cpu_model(), ram_bytes(), gpu_details(), host.cgroup_cpus()
    return Environment(
        machine_id=comparable_machine_id(model, cores, ram, gpu["gpu_name"], quota), host_id=host_id(),
        cgroup_cpus=quota, hostname=socket.gethostname(), cpu_model=model,
        cpu_cores=cores, ram_bytes=ram, **gpu,
        python=sys.version.split()[0], platform=platform.platform(),
        packages=family_packages(), threads=thread_settings(), seed=seed,
    )


def git_state(root: Path) -> Git:
    """Commit and dirty flag of the code under test (tracked files only: results written
    by the run itself do not make it dirty). A copy of the tree without its history (as
    shipped to a GPU host) names its commit in MLSUITE_GIT_COMMIT and MLSUITE_GIT_DIRTY=0|1."""
    if commit := os.environ.get("MLSUITE_GIT_COMMIT"):
        return Git(commit=commit, dirty=os.environ.get("MLSUITE_GIT_DIRTY", "1") != "0")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"))
    except (OSError, subprocess.SubprocessError):
        return Git(commit="unknown", dirty=True)
    return Git(commit=commit, dirty=dirty)
