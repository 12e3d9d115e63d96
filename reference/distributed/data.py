"""Seeded data for the distributed workloads.

Equivalence checks need every rank and the single-process reference to see exactly the
examples the others see, so batches are functions of (seed, step), never of a shared
iterator's position. Labels come from a fixed random linear teacher, so the task is
learnable; it is not an accuracy benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

FEATURES, CLASSES = 64, 10  # the inputs and outputs of reference.training.models' MLP


def _examples(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    teacher = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, FEATURES, generator=generator)
    return x, (x @ teacher).argmax(dim=1)


def classification_dataset(n: int, seed: int) -> TensorDataset:
    """n examples for epoch-based training with a DistributedSampler."""
    return TensorDataset(*_examples(n, torch.Generator().manual_seed(seed)))


@dataclass(frozen=True)
class Batching:
    """How one optimiser step's global batch is cut: world_size ranks, each running
    `accumulation` micro-batches of `micro_batch` examples."""

    world_size: int
    micro_batch: int
    accumulation: int

    def __post_init__(self) -> None:
        if min(self.world_size, self.micro_batch, self.accumulation) < 1:
            raise ValueError(f"world_size, micro_batch and accumulation must be >= 1, got {self}")

    @property
    def per_rank(self) -> int:
        return self.micro_batch * self.accumulation

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world_size


def global_batch(step: int, batching: Batching, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole step's examples, as the single-process reference sees them."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return _examples(batching.global_batch, generator)


def rank_micro_batches(step: int, batching: Batching, seed: int, rank: int,
                       device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank `rank`'s contiguous slice of the global batch, cut into micro-batches."""
    x, y = global_batch(step, batching, seed)
    start = rank * batching.per_rank
    x, y = x[start:start + batching.per_rank].to(device), y[start:start + batching.per_rank].to(device)
    return list(zip(x.split(batching.micro_batch), y.split(batching.micro_batch), strict=True))
