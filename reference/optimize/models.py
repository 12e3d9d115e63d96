"""The workloads this family adds to the training ones: an LSTM classifier (dynamic INT8
quantisation of `nn.LSTM` is the classic case) and a model with data-dependent control flow
(the TorchScript tracing pitfall)."""

from __future__ import annotations

import torch
from torch import nn

LSTM_HIDDEN = {"tiny": 32, "small": 64, "base": 256}


class LSTMClassifier(nn.Module):
    """Reads a sequence (N, steps, features) and classifies from the last hidden state."""

    def __init__(self, hidden: int, features: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class RangeGuard(nn.Module):
    """Rescales an input batch whose values leave [-limit, limit] before the wrapped model.

    The branch depends on the data, not on shapes: `torch.jit.trace` records only the branch
    its example took and silently ignores the other; `torch.jit.script` keeps both.
    """

    def __init__(self, model: nn.Module, limit: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().max()
        if peak > self.limit:
            x = x * (self.limit / peak)
        return self.model(x)
