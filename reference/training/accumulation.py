"""Gradient accumulation: k micro-batches, one optimiser step, same result as one batch.

Each micro-batch's mean loss is weighted by its share of the examples (len(micro)/len(batch)),
not by 1/k: with an uneven last micro-batch, dividing by k weights its examples wrongly.
"""

from __future__ import annotations

import torch
from torch import nn

from reference.training.loop import LossFn


def accumulation_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                      x: torch.Tensor, y: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """One optimiser step over (x, y) split into `micro_batches` pieces (the last may be
    smaller). `loss_fn` must reduce by mean. Returns the batch's mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for x_micro, y_micro in zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)):
        share = len(x_micro) / len(x)
        loss = loss_fn(model(x_micro), y_micro) * share
        loss.backward()
        total += loss.detach().float().cpu()
    optimizer.step()
    return total
