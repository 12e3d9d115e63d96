"""Trained fp32 workloads to optimise, by name. Training is deterministic for a seed, and
its result is cached on disk under a key that covers every input of training (recipe, seed,
torch version and the source of the code involved), so a scenario run in a fresh process
does not retrain and a code change never reads a stale model.

Models: `mlp` and `cnn` (digits), `transformer` (synthetic tokens: throughput only), all from
reference/training; `tabular` (an MLP on breast_cancer) and `lstm` (digits rows) from here.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reference.optimize import data as optimize_data
from reference.optimize import models as optimize_models
from reference.training import data, loop, models
from reference.training import workloads as training_workloads

NAMES = ("mlp", "cnn", "tabular", "lstm", "transformer")
CALIBRATION_SAMPLES = 256
BATCH, LEARNING_RATE = 64, 2e-3
EPOCHS = {"mlp": 12, "cnn": 12, "tabular": 20, "lstm": 25, "transformer": 2}
CACHE_ENV = "MLSUITE_CACHE_DIR"


@dataclass(frozen=True)
class Workload:
    name: str
    size: str
    model: nn.Module  # trained, fp32, eval mode, on CPU
    split: data.Split
    calibration: torch.Tensor  # inputs from the train split
    has_eval_task: bool  # False: synthetic data, accuracy is not a claim about a real task
    train_seconds: float | None  # None when the weights came from the cache

    def batch(self, n: int) -> torch.Tensor:
        """n eval inputs (repeating the eval set when n exceeds it)."""
        x = self.split.x_eval
        return x[torch.arange(n) % len(x)]


def untrained(name: str, size: str, seed: int) -> tuple[nn.Module, data.Split, bool]:
    if name in ("mlp", "cnn", "transformer"):
        built = training_workloads.build(name, size, seed)
        return built.model, built.split, built.has_eval_task
    torch.manual_seed(seed)
    if name == "tabular":
        return models.MLP(models.WIDTH[size], in_features=30, classes=2), optimize_data.breast_cancer(), True
    if name == "lstm":
        return optimize_models.LSTMClassifier(optimize_models.LSTM_HIDDEN[size]), optimize_data.digit_rows(), True
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(NAMES)}")


def train(model: nn.Module, split: data.Split, epochs: int, seed: int) -> None:
    """AdamW, batch 64, seeded shuffling: the same recipe as reference/training."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loop.train_epochs(
        lambda x, y: loop.train_step(model, optimizer, training_workloads.loss_fn, x, y),
        (data.minibatches(split.x_train, split.y_train, BATCH, generator) for _ in range(epochs)))
    model.eval()


def cache_key(name: str, size: str, seed: int) -> str:
    sources = [optimize_data, optimize_models, models, data, loop, training_workloads]
    digest = hashlib.sha256(f"{name}/{size}/{seed}/{EPOCHS[name]}/{BATCH}/{LEARNING_RATE}/{torch.__version__}".encode())
    for module in sources:
        digest.update(Path(module.__file__ or "").read_bytes())
    digest.update(Path(__file__).read_bytes())
    return f"{name}-{size}-{digest.hexdigest()[:16]}"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "mlsuite" / "optimize"))


def load(name: str, size: str, seed: int = 0, cache_dir: Path | None = None) -> Workload:
    """The trained workload; with a cache_dir, weights are read from or written to it."""
    model, split, has_eval_task = untrained(name, size, seed)
    path = cache_dir / f"{cache_key(name, size, seed)}.pt" if cache_dir is not None else None
    seconds: float | None = None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        start = time.perf_counter()
        train(model, split, EPOCHS[name], seed)
        seconds = time.perf_counter() - start
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(model.state_dict(), partial)
            partial.replace(path)  # atomic: a concurrent reader never sees half a file
    calibration = optimize_data.calibration_subset(split, CALIBRATION_SAMPLES, seed)
    return Workload(name, size, model, split, calibration, has_eval_task, seconds)
