"""Datasets for the training workloads.

`digits` is a real task (scikit-learn ships it: 1797 8x8 images, 10 classes) with a pinned,
stratified train/eval split. The token task is seeded synthetic data for transformer
throughput; it is not an accuracy benchmark.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0
DIGITS_EVAL_FRACTION = 0.25


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor


@cache
def digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `load_digits` gives them (1797 rows of 64 pixels in [0, 16],
    and their labels), read from the file scikit-learn ships without importing it: the
    import (with pandas) costs ~1.3 s natively and ~11 s under Valgrind, in every worker."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the digits come with scikit-learn; pip install scikit-learn")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)  # the last column is the label


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` each class gets: floor of its share, the rest to the largest
    remainders, ties broken by `rng` (scikit-learn's `_approximate_mode`)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if need == 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), need), replace=False)
        floored[chosen] += 1
        need -= len(chosen)
    return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of `train_test_split(..., test_size=test_fraction,
    stratify=labels, random_state=seed)`, step for step (its StratifiedShuffleSplit), so
    the split needs no scikit-learn import; a test holds the two equal."""
    n_test = math.ceil(test_fraction * len(labels))
    n_train = len(labels) - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for members, n_i, t_i in zip(by_class, train_counts, test_counts):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        train.extend(shuffled[:n_i])
        test.extend(shuffled[n_i:n_i + t_i])
    return rng.permutation(train), rng.permutation(test)


def digits(image: bool = False) -> Split:
    """Pinned split: 1347 train / 450 eval. Pixels scaled to [0, 1]; (N, 1, 8, 8) if image."""
    pixels, labels = digits_table()
    train, test = stratified_split(labels, DIGITS_EVAL_FRACTION, DIGITS_SPLIT_SEED)
    shape = (-1, 1, 8, 8) if image else (-1, 64)

    def features(rows: np.ndarray) -> torch.Tensor:
        return torch.tensor(rows / 16.0, dtype=torch.float32).reshape(shape)

    return Split(features(pixels[train]), torch.tensor(labels[train]), features(pixels[test]),
                 torch.tensor(labels[test]))


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
