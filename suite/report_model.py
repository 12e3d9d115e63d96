"""The report's document model, independent of its output format: sections of tables and
plots whose every number keeps its unit, its direction and its noise marks.

Renderers (suite/report_render.py) turn it into HTML or markdown; the family builders
(suite/report_families.py, suite/report_verdicts.py, suite/report_history.py) fill it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from suite.schema import Environment, Metric, Record, Status

WIDE_CI = 0.10  # a CI wider than +/-10% of its value is marked noisy wherever it appears
HIGHER, LOWER = "higher is better", "lower is better"
OUTCOME_TONE = {"pass": "good", "inconclusive": "muted", "FAIL": "bad"}  # the cell of a check's outcome


@dataclass(frozen=True)
class Column:
    name: str
    unit: str = ""  # "" for a text column
    direction: str = ""  # HIGHER, LOWER, or "" (descriptive)

    def header(self) -> str:
        arrow = {HIGHER: " ↑", LOWER: " ↓"}.get(self.direction, "")
        if not self.unit:
            return self.name
        return f"{self.name} ({self.unit}{', ' + self.direction if self.direction else ''}){arrow}"


@dataclass(frozen=True)
class Cell:
    text: str
    value: float | None = None  # the record's own number behind the text (for checks and tests)
    flags: tuple[str, ...] = ()  # noise marks: "CI ±23%", "oversubscribed"
    tone: str = ""  # "bad", "good" or "muted"
    link: str = ""  # anchor of the record this cell comes from


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    low: list[float] | None = None  # CI bounds of y, when known
    high: list[float] | None = None
    marked: list[bool] | None = None  # points drawn hollow: noisy, unstable or above a limit


@dataclass
class Bars:
    labels: list[str]
    values: list[float]
    low: list[float]
    high: list[float]
    noisy: list[bool]


@dataclass
class Plot:
    id: str
    title: str
    xlabel: str  # always with its unit and direction
    ylabel: str
    bars: Bars | None = None
    series: list[Series] = field(default_factory=list)
    log_x: bool = False
    log_y: bool = False
    reference: tuple[str, float, str] | None = None  # ("x" | "y", value, label): a line such as 1x or the SLO
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    question: str
    answers: list[str] = field(default_factory=list)  # the answer, first thing a reader sees
    tables: list[Table] = field(default_factory=list)
    plot: Plot | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """Where a record came from: its file and line, and its anchor in the full listing."""

    file: str
    line: int
    anchor: str
    artifacts: tuple[tuple[str, str], ...] = ()  # (name, path relative to the report) of files it wrote


# ---------------------------------------------------------------- numbers and noise


def fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None else str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def noise_flags(value: float, low: float, high: float, record: Record | None) -> tuple[str, ...]:
    """Why a reader should discount this number: a CI wider than +/-10% of its value, or a
    run measured while the host was oversubscribed."""
    flags = []
    half = max(value - low, high - value)
    if half > 0 and (value == 0 or half > WIDE_CI * abs(value)):
        flags.append("CI spans 0" if low <= 0 <= high else f"CI ±{half / abs(value):.0%}")
    if record is not None and record.oversubscribed:
        flags.append("oversubscribed")
    return tuple(flags)


def with_ci(value: float, low: float, high: float, scale: float = 1.0) -> str:
    text = fmt(value * scale)
    if (low, high) != (value, value) and math.isfinite(low) and math.isfinite(high):
        text += f" [{fmt(low * scale)}, {fmt(high * scale)}]"
    return text


def number_cell(value: float | None, record: Record | None = None, scale: float = 1.0, low: float | None = None,
                high: float | None = None, link: str = "") -> Cell:
    """value [95% CI] in the column's unit (`scale` converts, e.g. s -> ms), with noise marks."""
    if value is None or not math.isfinite(value):
        return Cell("-")
    low = value if low is None else low
    high = value if high is None else high
    return Cell(with_ci(value, low, high, scale), value, noise_flags(value, low, high, record), link=link)


def metric_cell(metric: Metric | None, record: Record, scale: float = 1.0, link: str = "") -> Cell:
    if metric is None:
        return Cell("-")
    return number_cell(metric.value, record, scale, metric.ci_low, metric.ci_high, link)


def checks_cell(record: Record, link: str = "") -> Cell:
    if record.status is Status.skipped:
        return Cell("skipped", tone="muted", link=link)
    if record.status is Status.error:
        return Cell("ERROR", tone="bad", link=link)
    failed = [c.name for c in record.checks if c.failed]
    unsettled = [c.name for c in record.checks if c.inconclusive]
    total = len(record.checks)
    if not total:
        return Cell("-", link=link)
    if failed:
        return Cell(f"FAIL {len(failed)}/{total}: {', '.join(failed)}", tone="bad", link=link)
    if unsettled:
        return Cell(f"inconclusive {len(unsettled)}/{total}: {', '.join(unsettled)}", tone="muted", link=link)
    return Cell(f"pass {total}/{total}", tone="good", link=link)


# ---------------------------------------------------------------- records


def params_text(params: dict[str, object], leave_out: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in leave_out)


def machine_label(env: Environment) -> str:
    """Short and unambiguous: the accelerator (or CPU cores) and the comparable machine id."""
    kind = env.gpu_name.replace("NVIDIA ", "") if env.gpu_name else f"CPU {env.cpu_cores} cores"
    return f"{kind} [{env.machine_id[:8]}]"


def family_of(scenario: str) -> str:
    return scenario.split(".", 1)[0]


def latest(records: list[Record]) -> list[Record]:
    """The newest record of each machine x profile x scenario x params."""
    newest: dict[tuple[str, str, str, str], Record] = {}
    for record in sorted(records, key=lambda r: r.time_utc):
        newest[(record.env.machine_id, record.profile, *record.key)] = record
    return sorted(newest.values(), key=lambda r: (r.scenario, r.env.machine_id, r.profile, params_text(r.params)))


def of_family(records: list[Record], family: str, measured: bool = True) -> list[Record]:
    """A family's records; `measured`: only those that ran (ok or failed a check)."""
    return [r for r in records if family_of(r.scenario) == family
            and (not measured or r.status in (Status.ok, Status.failed))]


def headline(record: Record) -> Metric | None:
    """The number a record is summarised by across commits and machines: its first rate
    (a throughput), else its first steady-state metric."""
    return (next((m for m in record.metrics if m.estimator == "rate" and m.kind == "steady"), None)
            or next((m for m in record.metrics if m.kind == "steady"), None))


def by_group(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    """Records per (machine, profile), the unit that is ever compared."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        groups[(record.env.machine_id, record.profile)].append(record)
    return dict(sorted(groups.items()))


def relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def anchor(record: Record) -> str:
    """The id of a record's folded entry in the full listing."""
    return f"r-{record.run_id}-{record.config_hash}"
