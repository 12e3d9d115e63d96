"""The report's instruction-count section: what each counted step costs in instructions
(and estimated cycles), how far its runs agree, and its time per call beside it, from the
timed record of the same machine, profile and configuration.

Counted records live under results/instructions/ (where `mlsuite run --count instructions`
writes them); they feed this section only, so a count never stands in for a time.
"""

from __future__ import annotations

from pathlib import Path

from suite.calibration import floors_for
from suite.compare import Floor
from suite.instructions import CYCLES_METRIC, METRIC
from suite.report_model import (
    LOWER,
    Cell,
    Column,
    Section,
    Table,
    anchor,
    latest,
    metric_cell,
    number_cell,
    params_text,
)
from suite.schema import Metric, Record, Status

FOLDER = "instructions"  # sub-folder of results/ with counted records
SPREAD_GOAL = 0.002  # between-run spread the counts are meant to stay under (issue 16)
CAVEAT = ("Counts do not see memory stalls, cache misses or parallel speedups: they measure the work a step asks "
          "of the CPU, not how long the CPU takes to do it. The estimated cycles add callgrind's modelled cache "
          "misses (10 cycles per L1 miss, 100 per last-level miss), still not this CPU's stalls or overlap. "
          "A change that only moves data differently, or uses more threads, shows in times, not counts.")


def spread(run_values: list[float]) -> float | None:
    """Largest over smallest run value, minus one: how far the runs of one record agree."""
    if len(run_values) < 2 or min(run_values) <= 0:
        return None
    return max(run_values) / min(run_values) - 1


def _time_beside(timed: Record | None, prefix: str) -> Cell:
    """The timed run's step time of the same contender: `<prefix>step_time`, or the name
    optimize gives its per-batch step times (`b8.` -> `latency.b8`)."""
    if timed is None:
        return Cell("-")
    step = timed.metric(f"{prefix}step_time") or timed.metric(f"latency.{prefix.rstrip('.')}")
    return metric_cell(step, timed, 1e3, anchor(timed))


def _count_cell(metric: Metric | None) -> Cell:
    """A count with its CI, never marked oversubscribed: load cannot move a count."""
    return number_cell(metric.value, None, 1.0, metric.ci_low, metric.ci_high) if metric else Cell("-")


def _calibrated_cell(floor: Floor | None) -> Cell:
    """The machine's calibrated between-run spread of this count (standard deviation of
    log counts over K runs), where `mlsuite calibrate --count instructions` measured it."""
    if floor is None:
        return Cell("-")
    return Cell(f"{floor.spread:.4%} ({floor.runs} runs)", floor.spread * 100,
                tone="bad" if floor.spread > SPREAD_GOAL else "")


def counts(counted: list[Record], timed: list[Record], calibration: Path) -> Section:
    section = Section("counts", "Instruction counts: the work per step, whatever the load",
                      "Did the work a step asks of the CPU change? (counted under Valgrind; times beside)")
    newest_timed = {(r.env.machine_id, r.profile, *r.key): r for r in latest(timed)}
    newest = latest(counted)
    table = Table([Column("scenario"), Column("configuration"), Column("contender"),
                   Column("instructions per call", "instructions", LOWER),
                   Column("spread between runs", "%", LOWER), Column("runs", "count"),
                   Column("calibrated spread", "%", LOWER),
                   Column("estimated cycles per call", "cycles", LOWER),
                   Column("time per call, timed run", "ms", LOWER), Column("commit")])
    spreads = []
    floors = {machine: floors_for(calibration, machine) for machine in {r.env.machine_id for r in newest}}
    calibrated = 0
    for record in (r for r in newest if r.status in (Status.ok, Status.failed)):
        beside = newest_timed.get((record.env.machine_id, record.profile, *record.key))
        for metric in (m for m in record.metrics if m.name.endswith(METRIC)):
            prefix = metric.name.removesuffix(METRIC)
            apart = spread(metric.run_values)
            if apart is not None:
                spreads.append(apart)
            floor = floors[record.env.machine_id].get((record.scenario, record.config_hash, metric.name))
            calibrated += floor is not None
            table.rows.append([
                Cell(record.scenario, link=anchor(record)), Cell(params_text(record.params)), Cell(prefix or "-"),
                _count_cell(metric),
                Cell("-" if apart is None else f"{apart:.3%}", None if apart is None else apart * 100,
                     tone="bad" if apart is not None and apart > SPREAD_GOAL else ""),
                Cell(str(len(metric.run_values)), float(len(metric.run_values))), _calibrated_cell(floor),
                _count_cell(record.metric(f"{prefix}{CYCLES_METRIC}")),
                _time_beside(beside, prefix), Cell(record.git.commit[:8])])
    section.tables.append(table)
    skipped = Table([Column("scenario"), Column("configuration"), Column("why it is not counted")])
    for record in (r for r in newest if r.status is Status.skipped):
        skipped.rows.append([Cell(record.scenario, link=anchor(record)), Cell(params_text(record.params)),
                             Cell(record.reason)])
    if skipped.rows:
        skipped.caption = "Not counted, with the reason each record gives."
        section.tables.append(skipped)
    if not table.rows:
        section.answers.append("No counted records yet: `mlsuite run --count instructions` writes them under "
                               "results/instructions/.")
    else:
        worst = max(spreads, default=None)
        over = sum(s > SPREAD_GOAL for s in spreads)
        section.answers.append(
            f"{len(table.rows)} counted step(s) in {len({r.key for r in newest if r.metrics})} configuration(s); "
            + (f"runs of one record agree to within {worst:.3%} at worst ({over} above the {SPREAD_GOAL:.1%} goal)"
               if worst is not None else "each with a single run, so their own spread is not known")
            + (f"; {calibrated} with a spread calibrated on this machine (`mlsuite calibrate --count "
               f"instructions`)." if calibrated else ".")
            + f" {len(skipped.rows)} configuration(s) could not be counted (below, with the reason).")
    section.notes.append(CAVEAT)
    section.notes.append("`mlsuite ab --count instructions` and `mlsuite gate` hold counts to 0.5% by default, never "
                         "below their calibrated A/A floor; where a count is calibrated, `ab --rounds 1` decides on "
                         "one counted run per side.")
    return section
