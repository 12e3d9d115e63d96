"""Render the report's sections as one self-contained HTML page (inline SVG, inline CSS,
no scripts, no network) and as GitHub markdown (plots as SVG files next to it)."""

from __future__ import annotations

import html
import json
import math

from suite.report_model import (
    HIGHER,
    LOWER,
    OUTCOME_TONE,
    Cell,
    Column,
    Section,
    Source,
    Table,
    checks_cell,
    fmt,
    machine_label,
    metric_cell,
    params_text,
)
from suite.schema import Record

PROVENANCE_CHARS = 4000  # a provenance dump longer than this is cut (the JSONL keeps it whole)

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 6px;font-size:12px;
vertical-align:top;text-align:left}th{background:#f3f3f3}.bad{color:#b00;font-weight:600}.good{color:#070}
.muted{color:#888}.noise{color:#a60;font-size:11px;white-space:nowrap}.question{font-style:italic}
.answer li{margin:.2em 0}figure{margin:.5em 0}figure svg{max-width:100%;height:auto}figcaption,.note{font-size:12px;
color:#555}details{margin:.2em 0}summary{cursor:pointer}pre{font-size:11px;white-space:pre-wrap;max-height:30em;
overflow:auto;background:#fafafa}nav a{margin-right:.8em}"""


# ---------------------------------------------------------------- per-record tables


def record_tables(record: Record) -> list[Table]:
    """Every metric, check and run of one record."""
    metrics = Table([Column("metric"), Column("unit"), Column("direction"), Column("kind"), Column("value [95% CI]"),
                     Column("n", "samples"), Column("runs", "count"), Column("between-run CV", "fraction", LOWER),
                     Column("p50 / p99", "metric's unit")], caption="metrics")
    for m in record.metrics:
        tails = "; ".join(f"p{p.q:g} {fmt(p.value)}" + ("" if p.claimed else f" (n<{p.min_samples}, not claimed)")
                          for p in m.percentiles if p.q in (50.0, 99.0))
        metrics.rows.append([Cell(m.name), Cell(m.unit), Cell(HIGHER if m.higher_is_better else LOWER),
                             Cell(f"{m.kind}, {m.estimator}"), metric_cell(m, record), Cell(str(m.n), float(m.n)),
                             Cell(str(len(m.run_values)), float(len(m.run_values))),
                             Cell(fmt(m.between_run_cv) if m.between_run_cv is not None else "-", m.between_run_cv),
                             Cell(tails or "-")])
    tables = [metrics]
    if record.checks:
        checks = Table([Column("check"), Column("outcome"), Column("observed"), Column("tolerance"), Column("detail")],
                       caption="checks")
        checks.rows = [[Cell(c.name), Cell(c.outcome, tone=OUTCOME_TONE[c.outcome]),
                        Cell(fmt(c.observed) if c.observed is not None else "-", c.observed),
                        Cell(fmt(c.tolerance) if c.tolerance is not None else "-", c.tolerance),
                        Cell(c.detail or c.reference or "-")] for c in record.checks]
        tables.append(checks)
    if record.runs:
        runs = Table([Column("run"), Column("status"), Column("duration", "s", LOWER), Column("threads", "count"),
                      Column("CPUs"), Column("load before", "1/5/15 min"), Column("run-queue wait", "fraction", LOWER),
                      Column("CPU / wall", "ratio"), Column("host")], caption="process runs")
        runs.rows = [[Cell(str(r.index)), Cell(r.status.value), Cell(fmt(r.duration_s), r.duration_s),
                      Cell(str(r.threads)), Cell(",".join(map(str, r.cpus))),
                      Cell(" / ".join(fmt(x) for x in r.load_before)),
                      Cell(fmt(r.runqueue_wait_fraction) if r.runqueue_wait_fraction is not None else "-"),
                      Cell(fmt(r.cpu_per_wall) if r.cpu_per_wall is not None else "-"),
                      Cell("oversubscribed", tone="bad") if r.oversubscribed else Cell("ok")] for r in record.runs]
        tables.append(runs)
    return tables


def record_summary(record: Record, source: Source) -> str:
    status = record.status.value if record.status.value != "ok" else checks_cell(record).text
    return (f"{record.scenario} ({params_text(record.params)}): {status} · {source.file}:{source.line} · "
            f"commit {record.git.commit[:8]}{' dirty' if record.git.dirty else ''}"
            f"{' · oversubscribed' if record.oversubscribed else ''}")


def environment_line(record: Record) -> str:
    env = record.env
    gpu = f"{env.gpu_name} (driver {env.gpu_driver}, CUDA {env.cuda})" if env.gpu_name else "no GPU"
    return (f"{machine_label(env)}: {env.cpu_model}, {env.cpu_cores} cores, {env.ram_bytes / 2**30:.0f} GiB, {gpu}; "
            f"python {env.python}, torch {env.packages.get('torch', 'absent')}, host {env.host_id or '-'}")


def provenance_text(record: Record) -> str:
    text = json.dumps(record.provenance, indent=1, default=str, sort_keys=True)
    return text if len(text) <= PROVENANCE_CHARS else text[:PROVENANCE_CHARS] + "\n… (cut; whole in the JSONL)"


# ---------------------------------------------------------------- HTML


def _html_cell(cell: Cell, tag: str = "td") -> str:
    text = html.escape(cell.text)
    if cell.link:
        text = f"<a href='#{html.escape(cell.link)}'>{text}</a>"
    marks = "".join(f" <span class='noise' title='noisy: read with care'>⚠ {html.escape(f)}</span>" for f in cell.flags)
    value = f" data-value='{cell.value!r}'" if cell.value is not None and math.isfinite(cell.value) else ""
    tone = f" class='{cell.tone}'" if cell.tone else ""
    return f"<{tag}{tone}{value}>{text}{marks}</{tag}>"


def html_table(table: Table) -> str:
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{html.escape(c.header())}</th>" for c in table.columns)
    if not table.rows:
        body = f"<tr><td colspan='{len(table.columns)}' class='muted'>no records</td></tr>"
    else:
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table.rows)
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_section(section: Section, svg: str | None) -> str:
    parts = [f"<section id='{section.id}'><h2>{html.escape(section.title)}</h2>",
             f"<p class='question'>{html.escape(section.question)}</p>"]
    if section.answers:
        parts.append("<ul class='answer'>" + "".join(f"<li>{html.escape(a)}</li>" for a in section.answers) + "</ul>")
    parts += [html_table(t) for t in section.tables]
    if section.plot is not None and svg is not None:
        parts.append(f"<figure class='plot' id='{section.plot.id}'>{svg}"
                     f"<figcaption>{html.escape(section.plot.caption)}</figcaption></figure>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in section.notes]
    return "".join(parts) + "</section>"


def html_records(groups: list[tuple[str, list[tuple[Record, Source]]]]) -> str:
    parts = ["<section id='records'><h2>Every record, folded</h2>"]
    for title, entries in groups:
        parts.append(f"<h3>{html.escape(title)}</h3><p class='note'>{html.escape(environment_line(entries[0][0]))}</p>")
        for record, source in entries:
            parts.append(f"<details id='{source.anchor}'><summary>{html.escape(record_summary(record, source))}"
                         "</summary>")
            if record.reason:
                parts.append(f"<p>{html.escape(record.reason)}</p>")
            parts += [f"<p><a href='{html.escape(link)}'>{html.escape(name)}</a></p>"
                      for name, link in source.artifacts]
            parts += [html_table(t) for t in record_tables(record)]
            parts.append(f"<pre>{html.escape(provenance_text(record))}</pre></details>")
    return "".join(parts) + "</section>"


def html_page(intro: list[str], sources: Table, sections: list[Section], svgs: dict[str, str],
              groups: list[tuple[str, list[tuple[Record, Source]]]]) -> str:
    nav = "".join(f"<a href='#{s.id}'>{html.escape(s.id)}</a>" for s in sections) + "<a href='#records'>records</a>"
    body = "".join(html_section(s, svgs.get(s.plot.id) if s.plot else None) for s in sections)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mlsuite results</title>"
            f"<style>{CSS}</style></head><body><h1>mlsuite results</h1>"
            + "".join(f"<p>{html.escape(line)}</p>" for line in intro)
            + f"<nav>{nav}</nav><section id='sources'><h2>Result files</h2>{html_table(sources)}</section>"
            + body + html_records(groups) + "</body></html>\n")


# ---------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: Cell, records_file: str) -> str:
    text = _md_escape(cell.text)
    if cell.tone == "bad":
        text = f"**{text}**"
    if cell.link:
        text = f"[{text}]({records_file}#{cell.link})"
    return text + "".join(f" ⚠ {_md_escape(f)}" for f in cell.flags)


def md_table(table: Table, records_file: str = "") -> list[str]:
    """A GitHub table; record links point into `records_file` (this file when empty)."""
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines += ["| " + " | ".join(_md_escape(c.header()) for c in table.columns) + " |",
              "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(_md_cell(c, records_file) for c in row) + " |" for row in table.rows]
    if not table.rows:
        lines.append("| no records |" + " |" * (len(table.columns) - 1))
    return [*lines, ""]


def md_section(section: Section, plot_path: str | None, records_file: str) -> list[str]:
    lines = [f"<a id=\"{section.id}\"></a>", "", f"## {section.title}", "", f"*{section.question}*", ""]
    lines += [f"- {a}" for a in section.answers] + [""]
    for table in section.tables:
        lines += md_table(table, records_file)
    if section.plot is not None and plot_path is not None:
        lines += [f"![{section.plot.title}]({plot_path})", "", section.plot.caption, ""]
    lines += [f"> {n}" + "\n" for n in section.notes]
    return lines


def records_markdown(groups: list[tuple[str, list[tuple[Record, Source]]]]) -> str:
    """Every record, folded: a file of its own, so the summaries stay small enough for GitHub
    to render."""
    lines = ["# mlsuite results: every record", "", "Generated by `mlsuite report`; the summaries are in "
             "[README.md](README.md).", ""]
    for title, entries in groups:
        lines += [f"## {title}", "", environment_line(entries[0][0]), ""]
        for record, source in entries:
            lines += [f"<a id=\"{source.anchor}\"></a>", "",
                      f"<details><summary>{html.escape(record_summary(record, source))}</summary>", ""]
            if record.reason:
                lines += [_md_escape(record.reason), ""]
            lines += [f"[{name}]({link})" for name, link in source.artifacts] + [""] * bool(source.artifacts)
            for table in record_tables(record):
                lines += md_table(table)
            lines += ["</details>", ""]
    return "\n".join(lines) + "\n"


def markdown(intro: list[str], sources: Table, sections: list[Section], plot_paths: dict[str, str],
             records_file: str) -> str:
    lines = ["# mlsuite results", "", *intro, "",
             " · ".join(f"[{s.id}](#{s.id})" for s in sections) + f" · [every record]({records_file})", "",
             "## Result files", "", *md_table(sources, records_file)]
    for section in sections:
        lines += md_section(section, plot_paths.get(section.plot.id) if section.plot else None, records_file)
    lines += ["## Every record", "", f"Every record's full metrics, checks and process runs, folded: "
              f"[{records_file}]({records_file}).", ""]
    return "\n".join(lines) + "\n"
