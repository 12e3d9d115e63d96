"""The digits split is scikit-learn's, made without importing scikit-learn (whose import
costs every worker ~1.3 s natively and ~11 s under Valgrind)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
from sklearn.model_selection import train_test_split  # noqa: E402

from reference.training import data  # noqa: E402


def test_digits_are_load_digits_split_as_train_test_split_splits_them() -> None:
    bunch = sklearn_datasets.load_digits()
    x_train, x_eval, y_train, y_eval = train_test_split(bunch.data, bunch.target, test_size=data.DIGITS_EVAL_FRACTION,
                                                        random_state=data.DIGITS_SPLIT_SEED, stratify=bunch.target)
    split = data.digits()
    assert torch.equal(split.x_train, torch.tensor(x_train / 16.0, dtype=torch.float32))
    assert torch.equal(split.x_eval, torch.tensor(x_eval / 16.0, dtype=torch.float32))
    assert torch.equal(split.y_train, torch.tensor(y_train)) and torch.equal(split.y_eval, torch.tensor(y_eval))
    assert data.digits(image=True).x_train.shape == (1347, 1, 8, 8)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.33])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_matches_scikit_learn_at_any_seed_and_fraction(seed: int, fraction: float) -> None:
    labels = data.digits_table()[1]
    train, test = data.stratified_split(labels, fraction, seed)
    expected_train, expected_test = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed,
                                                     stratify=labels)
    assert np.array_equal(train, expected_train) and np.array_equal(test, expected_test)


def test_loading_the_digits_imports_no_scikit_learn() -> None:
    code = ("import sys; from reference.training import data; data.digits(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'pandas')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
