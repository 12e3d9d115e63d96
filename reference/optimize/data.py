"""Datasets this family adds, on pinned real eval splits: scikit-learn's `breast_cancer`
(tabular, standardised with train-split statistics only) and digits read row by row as an
8-step sequence for the LSTM."""

from __future__ import annotations

import torch

from reference.training import data

BREAST_CANCER_SPLIT_SEED = 0
BREAST_CANCER_EVAL_FRACTION = 0.25


def breast_cancer() -> data.Split:
    """Pinned stratified split: 426 train / 143 eval, 30 features, 2 classes."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x_train, x_eval, y_train, y_eval = train_test_split(
        bunch.data, bunch.target, test_size=BREAST_CANCER_EVAL_FRACTION,
        random_state=BREAST_CANCER_SPLIT_SEED, stratify=bunch.target)
    x_train_t = torch.tensor(x_train, dtype=torch.float32)
    mean, std = x_train_t.mean(dim=0), x_train_t.std(dim=0)
    x_eval_t = torch.tensor(x_eval, dtype=torch.float32)
    return data.Split((x_train_t - mean) / std, torch.tensor(y_train), (x_eval_t - mean) / std, torch.tensor(y_eval))


def digit_rows() -> data.Split:
    """The pinned digits split, each image as a sequence of its 8 rows of 8 pixels."""
    flat = data.digits()
    return data.Split(flat.x_train.reshape(-1, 8, 8), flat.y_train, flat.x_eval.reshape(-1, 8, 8), flat.y_eval)


def calibration_subset(split: data.Split, samples: int, seed: int) -> torch.Tensor:
    """A seeded subset of the *train* split for INT8 calibration: never the eval split,
    or the accuracy measured afterwards would be optimistic."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(split.x_train), generator=generator)[:samples]
    return split.x_train[index]
