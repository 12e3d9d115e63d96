"""Plots saved as PNG files: Optuna's own study plots (optimisation history, parameter
importances, intermediate values) through optuna.visualization.matplotlib, and anytime
best-so-far curves with confidence bands."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Band:
    """One curve: x, its centre (median over seeds) and a confidence band."""

    x: Sequence[float]
    centre: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]


def _save(figure: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]
    return path


def save_study_plots(study: Any, directory: Path, prefix: str) -> list[Path]:
    """Optimisation history, parameter importances (when there is something to rank) and
    intermediate values (when trials reported any)."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    trials = study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots: dict[str, Callable[..., Any]] = {"history": optuna_plots.plot_optimization_history}
    if len(complete) >= 2 and len(complete[0].params) >= 2:
        plots["importances"] = optuna_plots.plot_param_importances
    if any(t.intermediate_values for t in trials):
        plots["intermediate"] = optuna_plots.plot_intermediate_values
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            axes = plot(study)
            written.append(_save(axes.figure, directory / f"{prefix}-{name}.png"))
    return written


def save_curves(curves: Mapping[str, Band], path: Path, *, title: str, xlabel: str, ylabel: str,
                log_y: bool = False) -> Path:
    """Best-so-far curves, one per method, each with its confidence band."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for label, band in curves.items():
        line = axes.plot(band.x, band.centre, label=label, drawstyle="steps-post")[0]
        axes.fill_between(band.x, band.low, band.high, step="post", alpha=0.2, color=line.get_color())
    if log_y:
        axes.set_yscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, path)
