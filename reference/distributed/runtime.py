"""Process-group lifecycle: who am I (from the launcher's environment), which device, and a
context that always tears the group down, on error too.

The backend and the device are parameters, never hard-coded: gloo/CPU on a CPU host,
nccl/CUDA on a GPU host. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
DEVICES = ("cpu", "cuda")
DEFAULT_BACKEND = {"cpu": "gloo", "cuda": "nccl"}
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> RankInfo:
        """What torchrun, the deepspeed launcher and `launch.spawn` all export."""
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        if missing:
            raise RuntimeError(f"not launched as a distributed job: {', '.join(missing)} unset "
                               "(start it with torchrun, the deepspeed launcher or launch.spawn)")
        rank = int(os.environ["RANK"])
        return cls(rank=rank, world_size=int(os.environ["WORLD_SIZE"]),
                   local_rank=int(os.environ.get("LOCAL_RANK", rank)))


@dataclass(frozen=True)
class Session:
    """An initialised process group as the training code sees it."""

    info: RankInfo
    device: torch.device
    backend: str

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0


def mean_over_ranks(value: torch.Tensor) -> float:
    """A rank-local scalar (a loss) averaged over the job: every rank gets the same float."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def validate(backend: str, device: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose {' or '.join(DEVICES)}")
    if backend == "nccl" and device != "cuda":
        raise ValueError("the nccl backend needs device=cuda; use gloo on CPU")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device")


def device_for(device: str, local_rank: int) -> torch.device:
    """One GPU per local rank; on CPU every rank shares the host."""
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextmanager
def process_group(backend: str, device: str, timeout_s: float = 300.0) -> Iterator[Session]:
    """Join the job's process group; leave it however the body ends. A rank that raises
    destroys its group, so its peers see a closed connection instead of waiting out the
    collective timeout. A rank that finishes waits at a barrier first, so none closes
    its connections while a peer is still inside a collective with it: gloo aborts a rank
    whose connection is reset mid-collective (SIGABRT; CI once saw the deepspeed launcher
    exit 250, a rank's -6, at the end of a hostfile job)."""
    validate(backend, device)
    info = RankInfo.from_environment()
    torch_device = device_for(device, info.local_rank)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=timeout_s),
                            device_id=torch_device if device == "cuda" else None)
    try:
        yield Session(info=info, device=torch_device, backend=backend)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
