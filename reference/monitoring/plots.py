"""Tables and figures of the validation harness from result records: false-alarm rate against
the number of features (uncorrected, Bonferroni, BH, with Clopper-Pearson intervals) and
detection rate against shift size per window size, one figure per dataset.

    python -m reference.monitoring.plots results/ --out results/monitoring

writes validation.md, false_alarms.png and power_<dataset>.png (newest record of each
scenario x params wins).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from suite.schema import Metric, Record, load_many

CORRECTION_LABELS = {"false_alarm_rate_uncorrected": "uncorrected", "fwer_bonferroni": "Bonferroni",
                     "fdr_bh": "Benjamini-Hochberg"}
POWER_METRIC = re.compile(r"^power\.window_(\d+)\.shift_([0-9.e-]+)$")


def newest(records: list[Record], scenario: str) -> list[Record]:
    by_params: dict[str, Record] = {}
    for record in sorted((r for r in records if r.scenario == scenario and r.status.value in ("ok", "failed")),
                         key=lambda r: r.time_utc):
        by_params[record.config_hash] = record
    return list(by_params.values())


def interval(metric: Metric) -> str:
    return f"{metric.value:.3f} [{metric.ci_low:.3f}, {metric.ci_high:.3f}]"


def false_alarm_rows(records: list[Record]) -> dict[str, list[tuple[int, dict[str, Metric]]]]:
    """kind -> [(features, {correction label: metric})] sorted by features."""
    rows: dict[str, list[tuple[int, dict[str, Metric]]]] = defaultdict(list)
    for record in newest(records, "monitoring.drift.fpr"):
        for kind in ("numeric", "categorical"):
            found = {label: m for name, label in CORRECTION_LABELS.items() if (m := record.metric(f"{kind}.{name}"))}
            if found:
                rows[kind].append((int(record.params["features"]), found))
    return {kind: sorted(found, key=lambda row: row[0]) for kind, found in rows.items()}


def power_grid(record: Record) -> dict[int, dict[float, Metric]]:
    """window -> shift -> detection-rate metric."""
    grid: dict[int, dict[float, Metric]] = defaultdict(dict)
    for metric in record.metrics:
        if match := POWER_METRIC.match(metric.name):
            grid[int(match.group(1))][float(match.group(2))] = metric
    return grid


def markdown(records: list[Record]) -> str:
    lines = ["# Drift detection: validation", "",
             "Rate of windows with at least one flagged feature when nothing drifted (95% Clopper-Pearson "
             "interval). With correction it must stay at or below alpha = 0.05; uncorrected it grows as "
             "1 - (1 - alpha)^F.", ""]
    for kind, rows in false_alarm_rows(records).items():
        lines += [f"## False alarms, {kind} features", "", "| features | " + " | ".join(CORRECTION_LABELS.values())
                  + " |", "|---|" + "---|" * len(CORRECTION_LABELS)]
        lines += [f"| {features} | " + " | ".join(interval(found[label]) if label in found else "-"
                                                   for label in CORRECTION_LABELS.values()) + " |"
                  for features, found in rows]
        lines.append("")
    for record in newest(records, "monitoring.drift.power"):
        grid = power_grid(record)
        shifts = sorted({shift for by_shift in grid.values() for shift in by_shift})
        lines += [f"## Detection rate, {record.params['dataset']} (BH, alpha 0.05)", "",
                  f"shift: {record.provenance.get('shift', '')}", "",
                  "| window | " + " | ".join(f"shift {s:g}" for s in shifts) + " |", "|---|" + "---|" * len(shifts)]
        lines += [f"| {window} | " + " | ".join(interval(grid[window][s]) if s in grid[window] else "-"
                                                 for s in shifts) + " |" for window in sorted(grid)]
        lines.append("")
    return "\n".join(lines)


def figures(records: list[Record], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = false_alarm_rows(records)
    if rows:
        figure, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 4), squeeze=False)
        for ax, (kind, found) in zip(axes[0], rows.items()):
            for label in CORRECTION_LABELS.values():
                points = [(features, m) for features, by_label in found if (m := by_label.get(label))]
                ax.errorbar([f for f, _ in points], [m.value for _, m in points], capsize=3, marker="o", label=label,
                            yerr=[[m.value - m.ci_low for _, m in points], [m.ci_high - m.value for _, m in points]])
            ax.axhline(0.05, color="grey", linestyle="--", label="alpha")
            ax.set(xscale="log", xlabel="features tested", ylabel="P(any alarm | no drift)", title=f"{kind} features")
            ax.legend(fontsize=8)
        written.append(_save(figure, out / "false_alarms.png"))
    for record in newest(records, "monitoring.drift.power"):
        figure, ax = plt.subplots(figsize=(5.5, 4))
        for window, by_shift in sorted(power_grid(record).items()):
            shifts = sorted(by_shift)
            ax.plot(shifts, [by_shift[s].value for s in shifts], marker="o", label=f"window {window}")
            ax.fill_between(shifts, [by_shift[s].ci_low for s in shifts], [by_shift[s].ci_high for s in shifts],
                            alpha=0.2)
        ax.axhline(0.05, color="grey", linestyle="--")
        ax.set(xlabel="shift", ylabel="detection rate", ylim=(0, 1.02), title=record.params["dataset"])
        ax.legend(fontsize=8)
        written.append(_save(figure, out / f"power_{record.params['dataset']}.png"))
    return written


def _save(figure, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m reference.monitoring.plots", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results files or folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    records = load_many(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "validation.md"
    table.write_text(markdown(records))
    return [table, *figures(records, args.out)]


if __name__ == "__main__":
    for written_path in main():
        print(written_path)
