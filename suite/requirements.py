"""What a scenario needs from the machine. An unmet requirement becomes a `skipped` record
whose reason is `unmet()`'s exact text, never a silent gap.

Checks here must stay cheap and import nothing heavy: they run in the parent process for
every scenario before any worker is spawned.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from functools import cache

from packaging.version import Version


class Requirement:
    def unmet(self) -> str | None:
        """None when met, else the reason the scenario cannot run here."""
        raise NotImplementedError


@dataclass(frozen=True)
class Package(Requirement):
    name: str  # distribution name as pip knows it
    module: str | None = None  # import name, when it differs
    min_version: str | None = None

    def unmet(self) -> str | None:
        module = self.module or self.name.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            return f"package {self.name} is not installed"
        if self.min_version is not None:
            have = importlib.metadata.version(self.name)
            if Version(have) < Version(self.min_version):
                return f"package {self.name} {have} is older than {self.min_version}"
        return None


@dataclass(frozen=True)
class Binary(Requirement):
    name: str

    def unmet(self) -> str | None:
        return None if shutil.which(self.name) else f"binary {self.name} is not on PATH"


@cache
def cuda_device_count() -> int:
    """Number of CUDA devices torch sees (0 without torch or without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Cuda(Requirement):
    devices: int = 1

    def unmet(self) -> str | None:
        have = cuda_device_count()
        if have >= self.devices:
            return None
        if have == 0:
            return "CUDA is not available (no GPU visible to torch)"
        return f"needs {self.devices} CUDA devices, {have} visible"


@dataclass(frozen=True)
class Processes(Requirement):
    """A multi-process scenario: needs that many CPU cores so ranks do not time-share one."""

    count: int

    def unmet(self) -> str | None:
        cores = os.cpu_count() or 1
        return None if cores >= self.count else f"needs {self.count} processes, {cores} cores"


def first_unmet(requirements: list[Requirement]) -> str | None:
    return next((reason for r in requirements if (reason := r.unmet()) is not None), None)
