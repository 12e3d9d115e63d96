"""Regenerates results/README.md (+ RECORDS.md) and results/index.html from every results file present.

The page answers a platform engineer's questions from the top of each section: one section
per technique family (a summary table and a plot), then conformance failures, regression
verdicts against the previous results of the same machine and profile, history across
commits with change points, and the same scenario on several machines. Every record's full
metrics follow, folded. results/ab/ and results/calibration/ feed the regression verdicts
only; they are not listed as ordinary records. Counted records (results/instructions/) feed
the instruction-count section only: a count never stands in for a time.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from suite.errors import SuiteError
from suite.report_counts import FOLDER as COUNTED
from suite.report_counts import counts
from suite.report_families import family_sections
from suite.report_history import history
from suite.report_model import Cell, Column, Section, Source, Table, anchor, by_group, latest, machine_label, relative
from suite.report_render import html_page, markdown, records_markdown
from suite.report_verdicts import conformance, machines, regressions
from suite.schema import Record, load_records, read_text, write_json_schema

NOT_LISTED = ("ab", "calibration")  # sub-folders of results/ that feed verdicts, not the listing
PLOTS = "plots"  # sub-folder of results/ with the markdown's SVG plots
RECORDS = "RECORDS.md"  # the markdown's folded listing of every record


def ordinary_files(results_dir: Path) -> list[Path]:
    """Every .jsonl results file under the folder except A/B and calibration runs."""
    files = [f for f in sorted(results_dir.rglob("*.jsonl"))
             if f.relative_to(results_dir).parts[0] not in NOT_LISTED]
    if not files:
        raise SuiteError(f"{results_dir}: no .jsonl results files in it")
    return files


def artifact_links(record: Record, results_dir: Path) -> list[tuple[str, str]]:
    """(name, path relative to the report) of each file the scenario wrote for the report."""
    links = []
    for raw in record.provenance.get("artifacts", []) if isinstance(record.provenance.get("artifacts"), list) else []:
        path = Path(raw)
        try:
            links.append((path.name, path.resolve().relative_to(results_dir.resolve()).as_posix()))
        except ValueError:
            continue  # written outside the results folder: not published
    return links


def load_with_sources(results_dir: Path) -> tuple[list[Record], dict[int, Source]]:
    """Records of every ordinary file, each with the file and line it came from."""
    records: list[Record] = []
    sources: dict[int, Source] = {}
    for path in ordinary_files(results_dir):
        lines = [n for n, text in enumerate(read_text(path).splitlines(), start=1) if text.strip()]
        for record, line in zip(load_records(path), lines):
            records.append(record)
            sources[id(record)] = Source(relative(path, results_dir), line, anchor(record),
                                         tuple(artifact_links(record, results_dir)))
    return records, sources


def sources_table(records: list[Record], sources: dict[int, Source]) -> Table:
    table = Table([Column("machine"), Column("profile"), Column("files"), Column("commits (* dirty)"),
                   Column("records", "count"), Column("oversubscribed records", "count", "lower is better"),
                   Column("newest record", "UTC")])
    for (_, profile), group in by_group(records).items():
        files = sorted({sources[id(r)].file for r in group})
        commits = sorted({f"{r.git.commit[:8]}{'*' if r.git.dirty else ''}" for r in group})
        flagged = sum(r.oversubscribed for r in group)
        table.rows.append([Cell(machine_label(group[0].env)), Cell(profile), Cell(", ".join(files)),
                           Cell(", ".join(commits)), Cell(str(len(group)), float(len(group))),
                           Cell(str(flagged), float(flagged), tone="bad" if flagged else ""),
                           Cell(max(r.time_utc for r in group)[:19])])
    return table


def build(records: list[Record], sources: dict[int, Source], results_dir: Path) -> list[Section]:
    counted = [r for r in records if Path(sources[id(r)].file).parts[0] == COUNTED]
    timed = [r for r in records if Path(sources[id(r)].file).parts[0] != COUNTED]
    newest = latest(timed)
    return [*family_sections(newest), counts(counted, timed, results_dir / "calibration"), conformance(newest, sources),
            regressions(timed, results_dir), history(timed), machines(newest)]


def record_groups(records: list[Record], sources: dict[int, Source]) -> list[tuple[str, list[tuple[Record, Source]]]]:
    grouped: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        grouped[(machine_label(record.env), record.profile)].append(record)
    return [(f"{machine}, profile {profile}", [(r, sources[id(r)]) for r in
                                               sorted(rows, key=lambda r: (r.scenario, r.time_utc))])
            for (machine, profile), rows in sorted(grouped.items())]


def write_report(results_dir: Path) -> list[Path]:
    from suite.report_plots import render_svg

    records, sources = load_with_sources(results_dir)
    sections = build(records, sources, results_dir)
    plots = [s.plot for s in sections if s.plot is not None]
    svgs = {plot.id: render_svg(plot) for plot in plots}
    plot_dir = results_dir / PLOTS
    plot_dir.mkdir(exist_ok=True)
    for stale in plot_dir.glob("plot-*.svg"):
        stale.unlink()
    for plot_id, svg in svgs.items():
        (plot_dir / f"{plot_id}.svg").write_text(svg + "\n")
    intro = [f"Generated by `mlsuite report` from {len(records)} records in "
             f"{len({s.file for s in sources.values()})} files under `results/` (A/B and calibration runs feed the "
             f"regressions section only); do not edit.",
             "Numbers: value [95% CI]. ⚠ marks a number to read with care: its CI is wider than ±10% of its value, "
             "or it was measured while the host was oversubscribed. Arrows in headers: ↑ higher is better, "
             "↓ lower is better. Family tables show the newest record of each machine, profile and configuration."]
    written = [results_dir / "README.md", results_dir / RECORDS, results_dir / "index.html",
               results_dir / "schema.json"]
    groups = record_groups(records, sources)
    table = sources_table(records, sources)
    written[0].write_text(markdown(intro, table, sections, {p: f"{PLOTS}/{p}.svg" for p in svgs}, RECORDS))
    written[1].write_text(records_markdown(groups))
    written[2].write_text(html_page(intro, table, sections, svgs, groups))
    write_json_schema(written[3])
    return [*written, *(plot_dir / f"{p}.svg" for p in svgs)]
