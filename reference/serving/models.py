"""The served model: an MLP over 8x8 digits (64 features, 10 classes), saved per version as
TorchScript, ONNX or a plain state dict, and loaded back as a numpy-in, numpy-out predictor.

A version directory holds `meta.json` (format, file, architecture) and one model file. The
state-dict format is loaded with `torch.load(..., weights_only=True)`: a model file is data,
never code to unpickle.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

IN_FEATURES, CLASSES = 64, 10
HIDDEN = {"tiny": (32,), "small": (256, 256), "large": (1024, 1024, 1024), "xlarge": (2048, 2048, 2048)}
FORMATS = ("torchscript", "onnx", "state_dict")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "state_dict": "weights.pt"}


class DigitsMLP(nn.Module):
    def __init__(self, hidden: Sequence[int], in_features: int = IN_FEATURES, classes: int = CLASSES) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(widths[-1], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build(size: str, seed: int = 0) -> DigitsMLP:
    if size not in HIDDEN:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(HIDDEN)}")
    torch.manual_seed(seed)
    return DigitsMLP(HIDDEN[size]).eval()


def save_version(model: DigitsMLP, version_dir: Path, fmt: str) -> Path:
    """Write one model version in `fmt`; returns the directory."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; choose from {', '.join(FORMATS)}")
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / FILE_NAMES[fmt]
    example = torch.zeros(2, IN_FEATURES)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, example), str(path))
    elif fmt == "onnx":
        with warnings.catch_warnings():  # the TorchScript exporter: ~10x faster here than dynamo, same graph
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    else:
        torch.save(model.state_dict(), path)
    hidden = [m.out_features for m in model.layers if isinstance(m, nn.Linear)][:-1]
    meta = {"format": fmt, "file": path.name, "architecture": {"hidden": hidden},
            "in_features": IN_FEATURES, "classes": CLASSES}
    (version_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return version_dir


@dataclass
class Predictor:
    """A loaded model: float32 rows (n, in_features) -> float32 outputs (n, classes)."""

    run: Callable[[np.ndarray], np.ndarray]
    in_features: int
    fmt: str

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(rows, dtype=np.float32))


def _torch_runner(module: torch.nn.Module, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Each thread that calls it sets torch's thread count on its first call: MKL keeps that
    count per thread, and a thread that never set it (a server's batcher thread) takes
    MKL_NUM_THREADS, whose 2 threads on one pinned CPU made every call 2.3x slower."""
    pinned = threading.local()

    def run(rows: np.ndarray) -> np.ndarray:
        if not getattr(pinned, "threads", None):
            torch.set_num_threads(threads)
            pinned.threads = threads
        with torch.inference_mode():
            return module(torch.from_numpy(rows)).numpy()

    return run


def _onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(rows: np.ndarray) -> np.ndarray:
        return session.run(None, {name: rows})[0]

    return run


def load_version(version_dir: Path, threads: int = 1) -> Predictor:
    """Load whatever format `meta.json` names; refuses unknown formats and stray files."""
    meta = json.loads((version_dir / "meta.json").read_text())
    fmt = meta["format"]
    if fmt not in FORMATS:
        raise ValueError(f"{version_dir}: unknown model format {fmt!r}")
    path = version_dir / FILE_NAMES[fmt]
    if fmt == "torchscript":
        run = _torch_runner(torch.jit.load(str(path), map_location="cpu").eval(), threads)
    elif fmt == "onnx":
        run = _onnx_runner(path, threads)
    else:
        model = DigitsMLP(meta["architecture"]["hidden"], meta["in_features"], meta["classes"])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        run = _torch_runner(model.eval(), threads)
    return Predictor(run=run, in_features=int(meta["in_features"]), fmt=fmt)


def overflowing_row(predictor: Predictor, magnitude: float, tries: int = 32, seed: int = 0) -> np.ndarray | None:
    """A row of +-`magnitude` whose outputs are not all finite on this host, or None where no
    sign pattern tried gives one. Whether they overflow depends on the weights and on the
    order of the sums (tiny seed 5's stayed finite for all +max on an AVX-512 EPYC and not
    on a Xeon), so a bad case that needs non-finite outputs is built from the deployed model
    with the code path the servers run, instead of being assumed."""
    signs = [np.ones(predictor.in_features), -np.ones(predictor.in_features)]
    signs += list(np.random.default_rng(seed).choice([-1.0, 1.0], size=(tries, predictor.in_features)))
    for pattern in signs:
        row = (pattern * magnitude).astype(np.float32)
        if not np.isfinite(predictor(row[None, :])).all():
            return row
    return None


def golden(model: DigitsMLP, rows: np.ndarray) -> np.ndarray:
    """The eager model in fp64: the truth served outputs are compared against."""
    import copy

    with torch.inference_mode():
        return copy.deepcopy(model).double()(torch.from_numpy(np.asarray(rows, dtype=np.float64))).numpy()


def eager(model: DigitsMLP, rows: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.asarray(rows, dtype=np.float32))).numpy()


def digits_rows(count: int | None = None) -> np.ndarray:
    """Real inputs: scikit-learn's 8x8 digits as float32 rows in [0, 16]
    (`reference.training.data.digits_table`: without importing scikit-learn)."""
    from reference.training.data import digits_table

    rows = digits_table()[0]
    return (rows if count is None else rows[:count]).astype(np.float32)
