"""The fp32 baseline: one optimiser step per minibatch, and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
               x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward, backward, step. Gradients stay on the parameters until the next step, so
    a caller can inspect them."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epochs(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 epochs: Iterable[Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> list[float]:
    """Run `step` over every minibatch of every epoch; returns each epoch's mean loss."""
    curve = []
    for batches in epochs:
        losses = [float(step(x, y)) for x, y in batches]
        curve.append(sum(losses) / len(losses))
    return curve


@torch.no_grad()
def correct_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int = 512) -> torch.Tensor:
    """Per-example correctness (bool), so accuracy can carry a bootstrap CI."""
    was_training = model.training
    model.eval()
    hits = [model(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]
            for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(hits).cpu()
