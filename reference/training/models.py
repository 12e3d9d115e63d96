"""The workloads, sized by a parameter: `tiny` for tests, `small` for CPU benchmarks,
`base` for GPU benchmarks. No dropout, so runs are deterministic for a fixed seed."""

from __future__ import annotations

import torch
from torch import nn

WIDTH = {"tiny": 32, "small": 256, "base": 1024}
TRANSFORMER = {  # d_model, layers, heads, sequence length
    "tiny": (32, 1, 2, 16),
    "small": (128, 2, 4, 64),
    "base": (512, 4, 8, 128),
}
VOCAB, TOKEN_CLASSES = 1000, 10


class MLP(nn.Module):
    def __init__(self, width: int, in_features: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """For 1x8x8 digits: two 3x3 convolutions, one pooling, a linear head."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        channels = max(8, width // 8)
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * channels * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TinyTransformer(nn.Module):
    """A small encoder-only classifier over token sequences (mean-pooled)."""

    def __init__(self, d_model: int, layers: int, heads: int, seq_len: int,
                 vocab: int = VOCAB, classes: int = TOKEN_CLASSES) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model,
                                           dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(tokens) + self.position[:, : tokens.shape[1]])
        return self.head(hidden.mean(dim=1))


def build(name: str, size: str, seed: int = 0) -> nn.Module:
    """The same seed gives the same initial weights."""
    torch.manual_seed(seed)
    if name == "mlp":
        return MLP(WIDTH[size])
    if name == "cnn":
        return SmallCNN(WIDTH[size])
    if name == "transformer":
        return TinyTransformer(*TRANSFORMER[size])
    raise ValueError(f"unknown model {name!r}; choose mlp, cnn or transformer")
