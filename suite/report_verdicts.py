"""Sections that judge rather than describe: conformance failures, regression verdicts
against the previous results of the same machine and profile (and the newest A/B run), and
the same scenario side by side on several machines (never mixed in one verdict)."""

from __future__ import annotations

import json
from pathlib import Path

from suite.compare import Comparison, Verdict, describe_change, describe_detectable, gate
from suite.errors import SuiteError
from suite.report_model import (
    HIGHER,
    OUTCOME_TONE,
    Bars,
    Cell,
    Column,
    Plot,
    Section,
    Source,
    Table,
    anchor,
    by_group,
    family_of,
    fmt,
    headline,
    machine_label,
    metric_cell,
    params_text,
)
from suite.schema import Record, Status, read_text

# ---------------------------------------------------------------- conformance


def conformance(records: list[Record], sources: dict[int, Source]) -> Section:
    section = Section("conformance", "Conformance: failed checks first",
                      "(d) Which conformance checks failed, and why?")
    table = Table([Column("outcome"), Column("scenario"), Column("params"), Column("machine"), Column("check"),
                   Column("observed"), Column("tolerance"), Column("reason"), Column("record")])
    failing, broken = [], []
    for r in records:
        where = sources[id(r)]
        record_cell = Cell(f"{where.file}:{where.line} ({r.profile}, {r.git.commit[:8]}"
                           f"{', dirty' if r.git.dirty else ''})", link=where.anchor)
        common = [Cell(r.scenario, link=where.anchor), Cell(params_text(r.params)), Cell(machine_label(r.env))]
        if r.status is Status.error:
            broken.append([Cell("ERROR", tone="bad"), *common, Cell("-"), Cell("-"), Cell("-"), Cell(r.reason),
                           record_cell])
        for check in r.checks:
            if not check.passed:
                failing.append([Cell(check.outcome, tone=OUTCOME_TONE[check.outcome]), *common, Cell(check.name),
                                Cell(fmt(check.observed) if check.observed is not None else "-", check.observed),
                                Cell(fmt(check.tolerance) if check.tolerance is not None else "-", check.tolerance),
                                Cell(check.detail or check.reference or "-"), record_cell])
    table.rows = sorted(failing, key=lambda row: row[0].text != "FAIL") + broken
    section.tables.append(table)
    passed = sum(c.passed for r in records for c in r.checks)
    unsettled = sum(c.inconclusive for r in records for c in r.checks)
    total = sum(len(r.checks) for r in records)
    section.answers.append(f"{len(failing) - unsettled} failed check(s), {unsettled} inconclusive (the noise left "
                           f"them unsettled) and {len(broken)} broken scenario(s) in the newest records; "
                           f"{passed} of {total} checks pass.")
    families: dict[str, list[int]] = {}
    for r in records:
        counts = families.setdefault(family_of(r.scenario), [0, 0])
        counts[0] += sum(c.passed for c in r.checks)
        counts[1] += len(r.checks)
    summary = Table([Column("family"), Column("checks passed", "count", HIGHER), Column("checks run", "count")],
                    caption="Checks per family")
    summary.rows = [[Cell(f), Cell(str(p), float(p)), Cell(str(t), float(t))] for f, (p, t) in sorted(families.items())]
    section.tables.append(summary)
    skipped = [r for r in records if r.status is Status.skipped]
    if skipped:
        section.notes.append(f"{len(skipped)} record(s) skipped (a requirement not met on that machine): "
                             + "; ".join(f"`{r.scenario}` on {machine_label(r.env)}: {r.reason}" for r in skipped[:12])
                             + (" …" if len(skipped) > 12 else ""))
    return section


# ---------------------------------------------------------------- regressions

VERDICT_ORDER = {Verdict.regressed: 0, Verdict.inconclusive: 1, Verdict.not_comparable: 2, Verdict.not_gated: 3,
                 Verdict.passed: 4}
VERDICT_TONE = {Verdict.regressed: "bad", Verdict.passed: "good"}


def newest_against_previous(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """The newest run's records, and for each of them the latest earlier record of the same
    scenario and params (one machine and profile)."""
    runs: dict[str, str] = {}
    for r in records:
        runs[r.run_id] = max(runs.get(r.run_id, ""), r.time_utc)
    newest_run = max(runs, key=lambda run: runs[run])
    current = [r for r in records if r.run_id == newest_run]
    baseline = {}
    for r in sorted(records, key=lambda r: r.time_utc):
        if r.run_id != newest_run and runs[r.run_id] < runs[newest_run]:
            baseline[r.key] = r
    wanted = {r.key for r in current}
    return [b for k, b in baseline.items() if k in wanted], current


def _rows(comparisons: list[Comparison]) -> list[list[Cell]]:
    rows = []
    for c in sorted(comparisons, key=lambda c: (VERDICT_ORDER.get(c.verdict, 5), c.scenario, c.metric)):
        rows.append([Cell(c.verdict.value, tone=VERDICT_TONE.get(c.verdict, "")), Cell(c.scenario),
                     Cell(params_text(c.params)), Cell(f"{c.metric}.{c.stat}"),
                     Cell(f"{fmt(c.baseline)} → {fmt(c.current)} {c.unit}", c.current),
                     Cell(describe_change(c), c.change), Cell(describe_detectable(c) or "-", c.detectable),
                     Cell(c.detail or "-")])
    return rows


def _verdict_table(caption: str) -> Table:
    return Table([Column("verdict"), Column("scenario"), Column("params"), Column("metric"),
                  Column("previous → newest", "metric's unit"), Column("change", "% or metric's unit, bad direction +"),
                  Column("minimum detectable effect", "% or metric's unit"), Column("detail")], caption=caption)


def _counts(comparisons: list[Comparison]) -> str:
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c.verdict.value] = counts.get(c.verdict.value, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "nothing to compare"


def _ab_section(results_dir: Path, section: Section) -> None:
    """The newest `mlsuite ab` verdicts file, if any."""
    files = sorted((results_dir / "ab").glob("*-verdicts.json")) if (results_dir / "ab").is_dir() else []
    if not files:
        section.notes.append("No `mlsuite ab` verdicts under results/ab/.")
        return
    try:
        data = json.loads(read_text(files[-1]))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{files[-1]}: not valid JSON ({exc.msg})") from None
    rows = [Comparison.from_json(row) for row in data.get("comparisons", [])]
    section.answers.append(f"A/B {data.get('base', '?')[:8]} → {data.get('head', '?')[:8]} "
                           f"({data.get('rounds', '?')} rounds, machine {str(data.get('machine_id', '?'))[:8]}): "
                           f"{_counts(rows)}; {data.get('oversubscribed_runs', 0)} oversubscribed run(s).")
    table = _verdict_table(f"A/B run {files[-1].name}")
    table.rows = _rows(rows)
    section.tables.append(table)


def regressions(records: list[Record], results_dir: Path) -> Section:
    from suite.calibration import floors_for

    section = Section("regressions", "Regressions: newest results against the previous ones",
                      "(c) What regressed since the previous commit, and is that real or noise?")
    for (machine, profile), group in by_group(records).items():
        baseline, current = newest_against_previous(group)
        label = f"{machine_label(current[0].env)}, profile {profile}"
        if not baseline:
            runs = len({r.run_id for r in group})
            section.answers.append(f"{label}: " + ("one run only, nothing to compare yet." if runs == 1 else
                                                   "no earlier record of the newest run's configurations."))
            continue
        result = gate(baseline, current, floors=floors_for(results_dir / "calibration", machine))
        head = current[0].git
        base_commits = sorted({b.git.commit[:8] for b in baseline})
        section.answers.append(f"{label}: {head.commit[:8]}{' (dirty)' if head.dirty else ''} against "
                               f"{', '.join(base_commits)}: {_counts(result.comparisons)}"
                               + (f"; gate failures: {'; '.join(result.failures)}" if result.failures else "") + ".")
        shown = [c for c in result.comparisons if c.verdict is not Verdict.passed]
        table = _verdict_table(f"{label}: every verdict except pass ({len(result.comparisons) - len(shown)} pass, "
                               f"listed with each record below)")
        table.rows = _rows(shown)
        section.tables.append(table)
    _ab_section(results_dir, section)
    section.notes.append("Verdicts from `suite.compare.gate` on run-level statistics: regressed = beyond the threshold "
                         "and significant after false-discovery control; inconclusive = the noise cannot resolve the "
                         "threshold (the minimum detectable effect says how large a change these runs could see).")
    return section


# ---------------------------------------------------------------- machines


def _machine_specific(rows: list[Record]) -> set[str]:
    """Parameters each machine sets its own way (device, size, batch): no value is shared
    between machines. The other parameters pair up the configurations to put side by side."""
    values: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        for k, v in r.params.items():
            values.setdefault(k, {}).setdefault(r.env.machine_id, set()).add(repr(v))
    return {k for k, per in values.items() if len(per) > 1 and not set.intersection(*per.values())}


def machines(records: list[Record]) -> Section:
    section = Section("machines", "Machines: the same scenario on each machine",
                      "How does the same scenario perform on each machine? (side by side, never one verdict)")
    measured = [r for r in records if r.status in (Status.ok, Status.failed)]
    labels = sorted({machine_label(r.env) for r in measured})
    table = Table([Column("scenario"), Column("configuration"), Column("headline metric"),
                   *(Column(m, "metric's unit") for m in labels)])
    bars_labels, values, shared = [], [], set()
    for scenario in sorted({r.scenario for r in measured}):
        rows = [r for r in measured if r.scenario == scenario]
        if len({r.env.machine_id for r in rows}) < 2:
            continue
        own = _machine_specific(rows)
        pairs: dict[str, dict[str, Record]] = {}
        for r in rows:
            pairs.setdefault(params_text(r.params, tuple(sorted(own))), {})[machine_label(r.env)] = r
        for config, per_machine in sorted(pairs.items()):
            first = next(iter(per_machine.values()))
            metric = headline(first)
            if len(per_machine) < 2 or metric is None:
                continue
            shared.add(scenario)
            cells, found = [], {}
            for label in labels:
                mine = per_machine.get(label)
                m = mine.metric(metric.name) if mine else None
                if mine is None or m is None:
                    cells.append(Cell("-"))
                    continue
                found[label] = m
                cell = metric_cell(m, mine)
                setting = params_text({k: mine.params[k] for k in sorted(own) if k in mine.params})
                cells.append(Cell(f"{cell.text} {m.unit} ({setting})", cell.value, cell.flags, link=anchor(mine)))
            table.rows.append([Cell(scenario), Cell(config or "-"),
                               Cell(f"{metric.name} ({metric.unit}, {'higher' if metric.higher_is_better else 'lower'}"
                                    " is better)"), *cells])
            if labels[0] in found:
                base = found[labels[0]]
                for label, m in found.items():
                    if label != labels[0] and m.value > 0 and base.value > 0:
                        ratio = m.value / base.value
                        bars_labels.append(f"{scenario} · {config} · {label}")
                        values.append(ratio if m.higher_is_better else 1 / ratio)
    if not shared:
        section.answers.append("No scenario has records from more than one machine.")
    else:
        section.answers.append(f"{len(shared)} scenario(s) ran on more than one machine: {', '.join(sorted(shared))}. "
                               "Rows pair configurations that share their parameters; what each machine sets its own "
                               "way (device, size, batch) is shown in its cell.")
    section.tables.append(table)
    if values:
        section.plot = Plot("plot-machines", f"Headline metric on each machine relative to {labels[0]}",
                            f"advantage over {labels[0]} (×, higher is better, log scale)",
                            "scenario · configuration · machine (configuration)", log_x=True,
                            reference=("x", 1.0, "same"),
                            bars=Bars(bars_labels, values, values, values, [False] * len(values)),
                            caption="Ratios in each metric's good direction; no CI and no verdict: different "
                                    "machines are never one comparison.")
    return section
