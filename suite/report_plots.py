"""Plots as self-contained SVG (text kept as text, so labels are searchable and the page
needs no fonts or network). Axis labels carry ids `<plot id>-xlabel` / `-ylabel`."""

from __future__ import annotations

import io
import math
import re

from suite.report_model import Plot

COLORS = ("#4878a8", "#d1833b", "#5a9e5a", "#c0504d", "#8064a2", "#4bacc6", "#9b7b4a", "#7f7f7f")


def render_svg(plot: Plot) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": plot.id, "font.size": 9}):
        if plot.bars is not None:
            figure, axes = plt.subplots(figsize=(8.5, 0.3 * len(plot.bars.labels) + 1.6))
            _bars(axes, plot)
        else:
            figure, axes = plt.subplots(figsize=(8.5, 4.8))
            _lines(axes, plot)
        if plot.reference is not None:
            axis, value, label = plot.reference
            line = axes.axvline if axis == "x" else axes.axhline
            line(value, color="#444", linestyle=":", linewidth=1, label=label)
        axes.set_xscale("log" if plot.log_x else "linear")
        if plot.log_y:
            axes.set_yscale("log")
        axes.set_title(plot.title)
        axes.set_xlabel(plot.xlabel, gid=f"{plot.id}-xlabel")
        axes.set_ylabel(plot.ylabel, gid=f"{plot.id}-ylabel")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        plt.close(figure)
    return _scoped(buffer.getvalue(), plot.id)


def _bars(axes, plot: Plot) -> None:  # type: ignore[no-untyped-def]
    bars = plot.bars
    assert bars is not None
    positions = list(range(len(bars.labels)))[::-1]
    errors = [[max(0.0, v - lo) for v, lo in zip(bars.values, bars.low)],
              [max(0.0, hi - v) for v, hi in zip(bars.values, bars.high)]]
    drawn = axes.barh(positions, bars.values, xerr=errors if any(map(any, errors)) else None, capsize=3,
                      color=COLORS[0], error_kw={"elinewidth": 1})
    for patch, noisy in zip(drawn, bars.noisy):
        if noisy:
            patch.set_hatch("///")
            patch.set_facecolor("#e8b04a")
    axes.set_yticks(positions, [_short(label) for label in bars.labels], fontsize=7)


def _lines(axes, plot: Plot) -> None:  # type: ignore[no-untyped-def]
    for index, series in enumerate(plot.series):
        color = COLORS[index % len(COLORS)]
        errors = None
        if series.low is not None and series.high is not None:
            errors = [[max(0.0, y - lo) if math.isfinite(lo) else 0.0 for y, lo in zip(series.y, series.low)],
                      [max(0.0, hi - y) if math.isfinite(hi) else 0.0 for y, hi in zip(series.y, series.high)]]
        axes.errorbar(series.x, series.y, yerr=errors, color=color, marker="o", markersize=4, linewidth=1.2,
                      capsize=2, label=_short(series.label, 60))
        marked = [(x, y) for x, y, m in zip(series.x, series.y, series.marked or []) if m]
        if marked:
            axes.scatter(*zip(*marked), s=40, facecolors="white", edgecolors=color, zorder=3)
    if plot.series:
        axes.legend(fontsize=6, loc="best")


def _short(label: str, limit: int = 70) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _scoped(svg: str, prefix: str) -> str:
    """The <svg> element alone, its ids prefixed so several plots can share one page."""
    svg = svg[svg.index("<svg"):]
    ids = set(re.findall(r'id="([^"]+)"', svg))
    keep = {f"{prefix}-xlabel", f"{prefix}-ylabel"}

    def rename(match: re.Match[str]) -> str:
        name = match.group(2)
        return f"{match.group(1)}{name if name in keep else prefix + '-' + name}{match.group(3)}" if name in ids \
            else match.group(0)

    return re.sub(r'(id="|url\(#|href="#)([^")]+)([")])', rename, svg)
