"""A workload = a model and its data, by name: the digits MLP and CNN (a real task with an
eval split) and the token transformer (throughput only, no accuracy claim)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference.training import data, models

TOKEN_SAMPLES, TOKEN_SEED = 2048, 1234


@dataclass(frozen=True)
class Workload:
    name: str
    model: nn.Module
    split: data.Split
    has_eval_task: bool  # False: synthetic data, accuracy means nothing

    def to(self, device: str) -> Workload:
        s = self.split
        moved = data.Split(s.x_train.to(device), s.y_train.to(device), s.x_eval.to(device), s.y_eval.to(device))
        return Workload(self.name, self.model.to(device), moved, self.has_eval_task)


def build(name: str, size: str, seed: int = 0) -> Workload:
    model = models.build(name, size, seed)
    if name in ("mlp", "cnn"):
        return Workload(name, model, data.digits(image=name == "cnn"), has_eval_task=True)
    _, _, _, seq_len = models.TRANSFORMER[size]
    tokens, labels = data.synthetic_tokens(TOKEN_SAMPLES, seq_len, models.VOCAB, models.TOKEN_CLASSES, TOKEN_SEED)
    cut = TOKEN_SAMPLES * 3 // 4
    split = data.Split(tokens[:cut], labels[:cut], tokens[cut:], labels[cut:])
    return Workload(name, model, split, has_eval_task=False)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, target)
