"""Each headline metric over commits, per machine and profile, with its CI and the change
points an existing library finds: Apache Otava (E-divisive means, as Hunter) when it is
installed, else ruptures (PELT on the median level, penalty scaled by the measured noise).
A single noisy run is not a step change: a change point needs a shift that persists."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from suite.report_model import (
    Cell,
    Column,
    Plot,
    Record,
    Section,
    Series,
    Table,
    anchor,
    fmt,
    headline,
    machine_label,
    number_cell,
    params_text,
)

MIN_SEGMENT = 2  # runs on each side of a change point


@dataclass
class History:
    machine: str
    profile: str
    scenario: str
    params: str
    metric: str
    unit: str
    higher_is_better: bool
    records: list[Record]

    def values(self) -> list[tuple[float, float, float]]:
        out = []
        for r in self.records:
            m = r.metric(self.metric)
            out.append((m.value, m.ci_low, m.ci_high) if m else (math.nan, math.nan, math.nan))
        return out


def histories(records: list[Record]) -> list[History]:
    """One series per machine x profile x scenario x params, oldest first."""
    series: dict[tuple[str, str, str, str], History] = {}
    for r in sorted(records, key=lambda r: r.time_utc):
        metric = headline(r)
        if metric is None:
            continue
        key = (r.env.machine_id, r.profile, r.scenario, r.config_hash)
        if key not in series:
            series[key] = History(machine_label(r.env), r.profile, r.scenario, params_text(r.params), metric.name,
                                  metric.unit, metric.higher_is_better, [])
        series[key].records.append(r)
    return sorted(series.values(), key=lambda h: (h.machine, h.profile, h.scenario, h.params))


def change_points(values: list[float], noise_sd: float) -> tuple[list[int], str]:
    """Indices where a new level starts, and the method that found them."""
    data = np.asarray(values, dtype=float)
    if data.size < 2 * MIN_SEGMENT or not np.all(np.isfinite(data)):
        return [], "too few runs"
    try:
        from otava.analysis import compute_change_points  # Apache Otava, formerly Hunter
    except ImportError:
        compute_change_points = None
    if compute_change_points is not None:
        found, _ = compute_change_points(list(data), window_len=30, max_pvalue=0.001)
        return sorted(int(cp.index) for cp in found), "Apache Otava"
    try:
        import ruptures
    except ImportError:
        return [], "no change-point library (pip install 'mlsuite[report]')"
    scale = max(noise_sd, float(np.std(data)) * 1e-3, 1e-12)
    # PELT on the median level (l1: one outlier does not pay for a segment of its own), with a
    # BIC-like penalty in units of the measured run-to-run noise.
    detector = ruptures.Pelt(model="l1", min_size=MIN_SEGMENT, jump=1).fit(data / scale)
    ends = detector.predict(pen=3 * math.log(data.size))
    return [int(e) for e in ends[:-1]], "ruptures PELT"


def _noise_sd(values: list[tuple[float, float, float]]) -> float:
    """Typical standard error of one point, from the CIs' half-widths (95% ~ 1.96 SE)."""
    halves = [(high - low) / 2 / 1.96 for _, low, high in values if math.isfinite(high - low) and high > low]
    return float(np.median(halves)) if halves else 0.0


def history(records: list[Record]) -> Section:
    section = Section("history", "History: headline metrics over commits, per machine",
                      "(e) How has a headline number moved over the last commits, on each machine?")
    table = Table([Column("machine"), Column("profile"), Column("scenario"), Column("params"),
                   Column("headline metric"), Column("runs", "count"), Column("first run", "metric's unit"),
                   Column("newest run", "metric's unit"), Column("newest / first", "×"),
                   Column("change points (commit where a new level starts)")])
    series, single = [], 0
    for h in histories(records):
        if len(h.records) < 2:
            single += 1
            continue
        values = h.values()
        points, method = change_points([v for v, _, _ in values], _noise_sd(values))
        first, last = values[0], values[-1]
        ratio = last[0] / first[0] if first[0] and math.isfinite(first[0]) else math.nan
        commits = [f"{r.git.commit[:8]}{'*' if r.git.dirty else ''}" for r in h.records]
        found = ", ".join(commits[i] for i in points) if points else f"none ({method})"
        table.rows.append([Cell(h.machine), Cell(h.profile), Cell(h.scenario, link=anchor(h.records[-1])),
                           Cell(h.params), Cell(f"{h.metric} ({h.unit}, {'higher' if h.higher_is_better else 'lower'}"
                                                f" is better)"),
                           Cell(str(len(values)), float(len(values))),
                           number_cell(first[0], h.records[0], 1, first[1], first[2]),
                           number_cell(last[0], h.records[-1], 1, last[1], last[2]),
                           Cell(fmt(ratio), ratio), Cell(found)])
        if first[0] and math.isfinite(first[0]):
            series.append(Series(f"{h.scenario} {h.metric} · {h.machine}", list(range(1, len(values) + 1)),
                                 [v / first[0] for v, _, _ in values], [lo / first[0] for _, lo, _ in values],
                                 [hi / first[0] for _, _, hi in values],
                                 marked=[i in points for i in range(len(values))]))
    section.answers.append(f"{len(table.rows)} series with two or more runs; {single} configuration(s) ran once. "
                           + (f"Change points found in {sum(not r[-1].text.startswith('none') for r in table.rows)}."
                              if table.rows else ""))
    section.tables.append(table)
    if series:
        section.plot = Plot("plot-history", "Headline metrics over runs, relative to each series' first run",
                            "run (index, oldest → newest; commits in the table)",
                            "value / first run's value (×, direction per metric in the table)", series=series,
                            reference=("y", 1.0, "first run"),
                            caption="Error bars: 95% CI; hollow points start a new level (change point).")
    section.notes.append("Headline metric: a scenario's first throughput, else its first steady-state metric. "
                         "Commits marked * were dirty.")
    return section
