"""Rank-0-only checkpoints that resume exactly.

A checkpoint holds everything the rest of the run depends on: model and optimiser state,
the next epoch, and the sampler's seed (the sampler's order is a function of seed and
epoch, so restoring both restores it). Rank 0 writes to a temporary file and renames it, so
a crash never leaves a half-written checkpoint; every rank waits at a barrier, so nobody
reads a file that is still being written. Every rank loads the same file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DDP wrapper, so the checkpoint loads without DDP too."""
    return getattr(model, "module", model)


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, next_epoch: int,
         sampler_seed: int, world_size: int, is_main: bool) -> None:
    if is_main:
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": next_epoch,
            "sampler": {"seed": sampler_seed, "epoch": next_epoch},
            "world_size": world_size,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, path)
    if dist.is_initialized():
        dist.barrier()


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device,
         sampler_seed: int, world_size: int) -> int:
    """Restore model and optimiser in place; returns the epoch to continue from. Refuses a
    checkpoint whose sampler would shard the data differently (another seed or world size),
    because the resumed run could then not be the run that was interrupted."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    if state["sampler"]["seed"] != sampler_seed or state["world_size"] != world_size:
        raise ValueError(f"{path} was written with sampler seed {state['sampler']['seed']} at world size "
                         f"{state['world_size']}; this run has seed {sampler_seed}, world size {world_size}")
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def path_for(directory: Path, epoch: int) -> Path:
    """One file per finished epoch, so any epoch can be resumed from."""
    return directory / f"epoch{epoch:04d}.pt"
