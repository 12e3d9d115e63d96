"""Datasets for the training workloads.

`digits` is a real task (scikit-learn ships it: 1797 8x8 images, 10 classes) with a pinned,
stratified train/eval split. The token task is seeded synthetic data for transformer
throughput; it is not an accuracy benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIGITS_SPLIT_SEED = 0
DIGITS_EVAL_FRACTION = 0.25


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor


def digits(image: bool = False) -> Split:
    """Pinned split: 1347 train / 450 eval. Pixels scaled to [0, 1]; (N, 1, 8, 8) if image."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_eval, y_train, y_eval = train_test_split(
        bunch.data, bunch.target, test_size=DIGITS_EVAL_FRACTION,
        random_state=DIGITS_SPLIT_SEED, stratify=bunch.target)
    shape = (-1, 1, 8, 8) if image else (-1, 64)

    def features(a):  # type: ignore[no-untyped-def]
        return torch.tensor(a / 16.0, dtype=torch.float32).reshape(shape)

    return Split(features(x_train), torch.tensor(y_train), features(x_eval), torch.tensor(y_eval))


def synthetic_tokens(n: int, seq_len: int, vocab: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded token sequences; the label is the most frequent token's class (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, seq_len), generator=generator)
    labels = torch.mode(tokens % classes, dim=1).values
    return tokens, labels


def minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):  # type: ignore[no-untyped-def]
    """One epoch of shuffled minibatches; the last one may be smaller."""
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        index = order[start:start + batch_size]
        yield x[index], y[index]
