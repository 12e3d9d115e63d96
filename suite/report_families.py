"""One section per technique family: the question a platform engineer brings, answered by
one summary table and one plot, built from the newest record of each configuration."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from suite import stats
from suite.report_model import (
    HIGHER,
    LOWER,
    Bars,
    Cell,
    Column,
    Plot,
    Record,
    Section,
    Series,
    Table,
    anchor,
    checks_cell,
    fmt,
    machine_label,
    metric_cell,
    noise_flags,
    number_cell,
    of_family,
    params_text,
)
from suite.schema import Metric

MIB = 1 / 2**20
MS = 1e3


def _bars(plot_id: str, title: str, xlabel: str, ylabel: str, points: Sequence[tuple[str, Metric, Record]],
          reference: tuple[str, float, str] | None = None) -> Plot | None:
    """Horizontal bars with their CIs, one per labelled metric; noisy ones hatched."""
    kept = [(label, m, r) for label, m, r in points if math.isfinite(m.value)]
    if not kept:
        return None
    bars = Bars(labels=[label for label, _, _ in kept], values=[m.value for _, m, _ in kept],
                low=[m.ci_low for _, m, _ in kept], high=[m.ci_high for _, m, _ in kept],
                noisy=[bool(noise_flags(m.value, m.ci_low, m.ci_high, r)) for _, m, r in kept])
    return Plot(plot_id, title, xlabel, ylabel, bars=bars, reference=reference,
                caption="Bars: value with its 95% CI; hatched: CI wider than ±10% or an oversubscribed run.")


def _inverse(metric: Metric | None, name: str) -> Metric | None:
    """1/x of a positive ratio metric, CI bounds swapped (a time ratio read as a speedup)."""
    if metric is None or metric.value <= 0 or metric.ci_low <= 0:
        return None
    return metric.model_copy(update={"name": name, "value": 1 / metric.value, "median": 1 / metric.median,
                                     "ci_low": 1 / metric.ci_high, "ci_high": 1 / metric.ci_low,
                                     "higher_is_better": not metric.higher_is_better})


def accuracy_difference(current: Metric, reference: Metric) -> tuple[float, float, float]:
    """current - reference with Newcombe's hybrid interval from the two proportions' own
    CIs (unpaired, so conservative when both were scored on the same items)."""
    d = current.value - reference.value
    low = d - math.hypot(current.value - current.ci_low, reference.ci_high - reference.value)
    high = d + math.hypot(current.ci_high - current.value, reference.value - reference.ci_low)
    return d, low, high


# ---------------------------------------------------------------- training


def _training_technique(record: Record) -> tuple[str, Metric | None]:
    """(technique, speedup vs its fp32 / full-batch reference)."""
    name = record.scenario.split(".", 1)[1]
    if name == "amp":
        return f"AMP {record.params.get('dtype', '')}", record.metric("amp_speedup")
    if name == "accumulation":
        return (f"accumulation ×{record.params.get('micro_batches', '?')}",
                _inverse(record.metric("accumulation_time_ratio"), "speedup"))
    return name, None


def _model(record: Record) -> str:
    return "/".join(str(record.params[k]) for k in ("model", "size") if k in record.params) or "-"


def training(records: list[Record]) -> Section:
    section = Section("training", "Training: what AMP and accumulation buy over fp32",
                      "(a) What does AMP bf16 / fp16 buy over fp32 on this hardware, at what accuracy change?")
    table = Table([Column("technique"), Column("model"), Column("machine"), Column("speedup vs fp32", "×", HIGHER),
                   Column("accuracy Δ vs fp32", "percentage points", HIGHER), Column("peak memory", "MiB", LOWER),
                   Column("conformance")])
    points = []
    for r in sorted(of_family(records, "training"), key=lambda r: (r.scenario, _model(r), r.env.machine_id)):
        technique, speedup = _training_technique(r)
        link = anchor(r)
        accuracy, fp32 = r.metric("eval_accuracy"), r.metric("fp32_eval_accuracy")
        delta = Cell("-")
        if accuracy is not None and fp32 is not None:
            d, low, high = accuracy_difference(accuracy, fp32)
            delta = number_cell(d, r, 100, low, high)
        memory = r.metric("peak_cuda_memory") if r.params.get("device") == "cuda" else r.metric("peak_rss")
        speed_cell = metric_cell(speedup, r) if speedup else Cell("1 (reference)", 1.0, tone="muted")
        table.rows.append([Cell(technique, link=link), Cell(_model(r)), Cell(machine_label(r.env)), speed_cell,
                           delta, metric_cell(memory, r, MIB), checks_cell(r)])
        if speedup is not None:
            points.append((f"{technique} · {_model(r)} · {machine_label(r.env)}", speedup, r))
            if r.scenario == "training.amp":
                section.answers.append(
                    f"{technique} on {_model(r)}, {machine_label(r.env)}: {speed_cell.text} × fp32 speed, "
                    f"accuracy Δ {delta.text} pp{_marks(speed_cell, delta)}.")
    section.tables.append(table)
    section.plot = _bars("plot-training", "Speedup over fp32 training", "speedup vs fp32 (×, higher is better)",
                         "technique · model · machine (configuration)", points, ("x", 1.0, "fp32 = 1×"))
    section.notes.append("Accuracy Δ: eval accuracy minus the same run's fp32 accuracy on the pinned eval split; "
                         "CI by Newcombe's method from the two accuracies' own intervals.")
    return section


def _marks(*cells: Cell) -> str:
    flags = sorted({flag for cell in cells for flag in cell.flags})
    return f" (⚠ {', '.join(flags)})" if flags else ""


# ---------------------------------------------------------------- distributed


def distributed(records: list[Record]) -> Section:
    section = Section("distributed", "Distributed: what sharding costs against DDP",
                      "What does each strategy cost in step time over DDP, what does it save per rank, "
                      "and does it train the same model as one process?")
    table = Table([Column("strategy"), Column("machine"), Column("overhead vs DDP", "× DDP step time", LOWER),
                   Column("step time, 2 ranks", "ms", LOWER), Column("parameters per rank", "MiB", LOWER),
                   Column("optimizer state per rank", "MiB", LOWER), Column("equivalence")])
    points = []
    for r in of_family(records, "distributed"):
        strategy = r.scenario.split(".", 1)[1] + (f" {r.params['stage']}" if "stage" in r.params else "")
        link = anchor(r)
        overhead = r.metric("p2.overhead_vs_ddp")
        overhead_cell = metric_cell(overhead, r) if overhead else Cell("1 (reference)", 1.0, tone="muted")
        table.rows.append([Cell(strategy, link=link), Cell(machine_label(r.env)), overhead_cell,
                           metric_cell(r.metric("p2.step_time"), r, MS),
                           metric_cell(r.metric("p2.parameters_bytes"), r, MIB),
                           metric_cell(r.metric("p2.optimizer_state_bytes"), r, MIB), checks_cell(r)])
        if overhead is not None:
            points.append((f"{strategy} · {machine_label(r.env)}", overhead, r))
            section.answers.append(f"{strategy}: {overhead_cell.text} × DDP step time{_marks(overhead_cell)}, "
                                   f"equivalence {checks_cell(r).text}.")
    section.tables.append(table)
    section.plot = _bars("plot-distributed", "Step time over DDP (2 ranks)",
                         "overhead vs DDP (× DDP step time, lower is better)", "strategy · machine (configuration)",
                         points, ("x", 1.0, "DDP = 1×"))
    section.notes += _skipped(records, "distributed")
    return section


def _skipped(records: list[Record], family: str) -> list[str]:
    """One line per machine, scenario and reason for what did not run."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for r in of_family(records, family, measured=False):
        if r.status.value in ("skipped", "error"):
            key = (r.status.value, machine_label(r.env), r.scenario, r.reason)
            counts[key] = counts.get(key, 0) + 1
    return [f"{status.capitalize()} on {machine}: `{scenario}` ({n} configuration{'s' * (n > 1)}): {reason}"
            for (status, machine, scenario, reason), n in counts.items()]


# ---------------------------------------------------------------- optimize


def _eager_reference(records: list[Record], r: Record) -> Record | None:
    """The eager fp32 record of the same machine, profile, model and device."""
    keys = ("model", "size")
    for other in records:
        if (other.scenario == "optimize.eager" and other.params.get("precision", "fp32") == "fp32"
                and other.env.machine_id == r.env.machine_id and other.profile == r.profile
                and all(other.params.get(k) == r.params.get(k) for k in keys)
                and other.params.get("device", "cpu") == r.params.get("device", "cpu")):
            return other
    return None


def optimize_speedup(record: Record, reference: Record | None, batch: int = 1) -> Metric | None:
    """Eager fp32 latency over this runtime's latency at a batch size: median ratio with a
    bootstrap CI over both sides' samples."""
    name = f"latency.b{batch}"
    mine, theirs = record.metric(name), reference.metric(name) if reference else None
    if mine is None or theirs is None or not mine.samples or not theirs.samples:
        return None
    return stats.ratio_of_medians(f"speedup.b{batch}", theirs.samples, mine.samples)


def optimize(records: list[Record]) -> Section:
    section = Section("optimize", "Optimize: runtimes and precisions for inference",
                      "Which runtime and precision is fastest here, how much smaller, and does it keep 99% of "
                      "fp32 accuracy (MLPerf)?")
    table = Table([Column("runtime"), Column("precision"), Column("model"), Column("machine"),
                   Column("latency, batch 1", "ms", LOWER), Column("speedup vs eager fp32, batch 1", "×", HIGHER),
                   Column("size vs fp32", "×", LOWER), Column("accuracy Δ", "percentage points", HIGHER),
                   Column("MLPerf ≥99% of fp32"), Column("execution provider used"), Column("conformance")])
    measured = of_family(records, "optimize")
    points = []
    for r in measured:
        link = anchor(r)
        runtime = str(r.provenance.get("runtime", r.scenario.split(".", 1)[1]))
        runtime += f" ({r.params['exporter']} export)" if "exporter" in r.params else ""
        precision = str(r.provenance.get("precision", r.params.get("precision", "fp32")))
        speedup = optimize_speedup(r, _eager_reference(measured, r))
        mlperf = next((c for c in r.checks if c.name == "accuracy.mlperf_99pct_of_fp32"), None)
        verdict = Cell("-") if mlperf is None else (Cell("pass", tone="good") if mlperf.passed
                                                    else Cell(f"FAIL ({mlperf.detail})", tone="bad"))
        provider = str(r.provenance.get("provider_used") or f"torch {r.params.get('device', 'cpu')}")
        table.rows.append([Cell(runtime, link=link), Cell(precision), Cell(_model(r)), Cell(machine_label(r.env)),
                           metric_cell(r.metric("latency.b1"), r, MS), metric_cell(speedup, r),
                           metric_cell(r.metric("size_vs_fp32"), r), metric_cell(r.metric("accuracy_delta"), r, 100),
                           verdict, Cell(provider), checks_cell(r)])
        if speedup is not None:
            points.append((f"{runtime} · {precision} · {_model(r)} · {machine_label(r.env)}", speedup, r))
    best = max(points, key=lambda p: p[1].value, default=None)
    if best:
        label, speedup, record = best
        cell = metric_cell(speedup, record)
        section.answers.append(f"Fastest at batch 1: {label}, {cell.text} × eager fp32{_marks(cell)}.")
    failed = [row[0].text for row in table.rows if row[8].tone == "bad"]
    section.answers.append(f"Below 99% of fp32 accuracy: {', '.join(failed)}." if failed
                           else "Every measured runtime keeps ≥99% of fp32 accuracy (MLPerf).")
    section.tables.append(table)
    section.plot = _bars("plot-optimize", "Speedup over eager fp32 at batch 1",
                         "speedup vs eager fp32, batch 1 (×, higher is better)",
                         "runtime · precision · model · machine (configuration)", points, ("x", 1.0, "eager fp32 = 1×"))
    section.notes.append("Speedup: median eager fp32 latency over median latency, same machine, profile and model; "
                         "95% CI by bootstrap of both sides' samples.")
    section.notes += _skipped(records, "optimize")
    return section


# ---------------------------------------------------------------- serving

LOAD_POINT = re.compile(r"^(?P<point>c\d+|open\d+)_throughput$")


def p99(metric: Metric | None) -> tuple[float, bool] | None:
    """(p99, claimed) of a latency metric."""
    found = next((p for p in metric.percentiles if p.q == 99.0), None) if metric else None
    return (found.value, found.claimed) if found else None


def load_curve(record: Record) -> list[tuple[str, float, float, bool]]:
    """(load point, throughput req/s, p99 latency s, p99 claimed) per load level: closed loop
    by concurrency, then open loop by offered rate."""
    curve = []
    for metric in record.metrics:
        match = LOAD_POINT.match(metric.name)
        tail = p99(record.metric(f"{match['point']}_latency")) if match else None
        if match and tail is not None:
            curve.append((match["point"], metric.value, *tail))
    return sorted(curve, key=lambda point: (point[0].startswith("open"), int(point[0].lstrip("copen"))))


def slo_seconds(record: Record) -> float | None:
    if "slo_p99_s" in record.provenance:
        return float(record.provenance["slo_p99_s"])
    return float(record.params["slo_ms"]) / 1e3 if "slo_ms" in record.params else None


def _batching(record: Record) -> str:
    p = record.params
    if p.get("batching") == "off":
        return "off"
    return f"on, max {p.get('max_batch_size', '?')}, {p.get('max_queue_delay_ms', '?')} ms"


def side_by_side(records: list[Record]) -> tuple[Table, list[str]]:
    """Every server of a `serving.side_by_side` record in one row each: the same model,
    cores and minutes, so its ratios to the reference server carry their own CIs; and one
    answer line per record."""
    table = Table([Column("server"), Column("model"), Column("machine"), Column("throughput", "req/s", HIGHER),
                   Column("p99", "ms", LOWER), Column("serving efficiency", "served / in-process", HIGHER),
                   Column("goodput at the SLO, by search", "req/s", HIGHER),
                   Column("fastapi ÷ this server", "throughput ratio", HIGHER), Column("conformance")],
                  caption="Side by side: every server under the same closed-loop load, their windows and the "
                          "in-process limit interleaved in the same minutes; ratios are medians of per-window "
                          "ratios with a bootstrap CI. Goodput is one open-loop search per server (no CI), the "
                          "searches taking turns probe by probe; a rate fails on two probes in a row.")
    answers = []
    for r in of_family(records, "serving"):
        if r.scenario != "serving.side_by_side":
            continue
        servers = [m.name.removesuffix("_efficiency") for m in r.metrics if m.name.endswith("_efficiency")]
        for server in servers:
            tail = p99(r.metric(f"{server}_latency"))
            table.rows.append([
                Cell(server, link=anchor(r)), Cell(str(r.params.get("model", "?"))), Cell(machine_label(r.env)),
                metric_cell(r.metric(f"{server}_throughput"), r),
                number_cell(tail[0], r, MS) if tail else Cell("-"),
                metric_cell(r.metric(f"{server}_efficiency"), r), metric_cell(r.metric(f"{server}_goodput"), r),
                metric_cell(r.metric(f"fastapi_over_{server}"), r), checks_cell(r)])
        ratios = [f"÷ {m.name.removeprefix('fastapi_over_')} {cell.text}{_marks(cell)}"
                  for m in r.metrics if m.name.startswith("fastapi_over_") for cell in [metric_cell(m, r)]]
        if ratios:
            answers.append(f"Side by side ({r.params.get('model', '?')} model, {machine_label(r.env)}, "
                           f"{r.profile} profile): fastapi {', '.join(ratios)}.")
    return table, answers


def loadgen_agreement(records: list[Record]) -> tuple[Table, list[str]]:
    """The load generator against wrk and hey on the same endpoint, the newest record per
    tool and concurrency: can its numbers be trusted, and where do the tools part?"""
    table = Table([Column("tool"), Column("concurrency"), Column("machine"),
                   Column("ours ÷ tool, throughput", "ratio", HIGHER), Column("ours ÷ tool, p50", "ratio", LOWER),
                   Column("generator capacity", "req/s", HIGHER), Column("conformance")],
                  caption="The load generator against wrk and hey: interleaved 1 s rounds on the same endpoint, in "
                          "looks of rounds a side until the checks settle; a ratio's CI (widened for the looks) "
                          "must lie within 1 ± 10% to agree (a CI across that edge is inconclusive); against a "
                          "tool slower than ours itself (hey), only ours falling behind it counts.")
    newest: dict[tuple[str, int], Record] = {}
    for r in of_family(records, "serving"):
        tool, concurrency = r.params.get("tool"), r.params.get("concurrency")
        if r.scenario != "serving.loadgen" or not isinstance(tool, str) or not isinstance(concurrency, int):
            continue  # another scenario, or a record that does not say which tool at what concurrency
        key = (tool, concurrency)
        if key not in newest or r.time_utc > newest[key].time_utc:
            newest[key] = r
    points: dict[str, list[str]] = {}
    for tool, concurrency in sorted(newest):
        r = newest[tool, concurrency]
        throughput = metric_cell(r.metric(f"ours_throughput_over_{tool}"), r)
        table.rows.append([Cell(tool, link=anchor(r)), Cell(f"c{concurrency}", float(concurrency)),
                           Cell(machine_label(r.env)), throughput, metric_cell(r.metric(f"ours_p50_over_{tool}"), r),
                           metric_cell(r.metric("loadgen_capacity"), r), checks_cell(r)])
        points.setdefault(tool, []).append(f"c{concurrency} {throughput.text}")
    return table, [f"Load generator ÷ {tool}, throughput: {', '.join(cells)}." for tool, cells in points.items()]


def serving(records: list[Record]) -> Section:
    section = Section("serving", "Serving: throughput under a latency SLO",
                      "(b) Which server, with which batching setting, gives the most throughput under a p99 SLO?")
    table = Table([Column("server"), Column("batching"), Column("machine"),
                   Column("throughput with p99 ≤ SLO, from the curve", "req/s", HIGHER),
                   Column("goodput as recorded", "req/s", HIGHER), Column("peak throughput", "req/s", HIGHER),
                   Column("serving efficiency", "served / in-process", HIGHER),
                   Column("cold start to ready", "s", LOWER), Column("first request", "ms", LOWER),
                   Column("conformance")])
    series, slos, best = [], set(), None
    for r in of_family(records, "serving"):
        curve = load_curve(r)
        if not curve:
            continue
        link = anchor(r)
        slo = slo_seconds(r)
        slos.add(slo)
        server = r.scenario.split(".", 1)[1]
        label = f"{server} · batching {_batching(r)} · {machine_label(r.env)}"
        within = [(tp, point) for point, tp, tail, claimed in curve if slo is not None and tail <= slo]
        best_within = max(within, default=None)
        cell = Cell(f"{fmt(best_within[0])} at {best_within[1]}", best_within[0]) if best_within else Cell(
            "none within the SLO", 0.0, tone="bad")
        unstable = best_within is not None and f"closed@{best_within[1].lstrip('c')}" in r.provenance.get(
            "unstable_points", [])
        flags = ("unstable load point",) * unstable + ("oversubscribed",) * r.oversubscribed
        cell = Cell(cell.text, cell.value, flags, cell.tone)
        table.rows.append([Cell(server, link=link), Cell(_batching(r)), Cell(machine_label(r.env)), cell,
                           metric_cell(r.metric("goodput"), r), metric_cell(r.metric("peak_throughput"), r),
                           metric_cell(r.metric("serving_efficiency"), r),
                           metric_cell(r.metric("cold_start_to_ready"), r),
                           metric_cell(r.metric("first_request"), r, MS), checks_cell(r)])
        closed = [point for point in curve if point[0].startswith("c")]
        series.append(Series(label, [tp for _, tp, _, _ in closed], [tail * MS for _, _, tail, _ in closed],
                             marked=[not claimed or (slo is not None and tail > slo)
                                     for _, _, tail, claimed in closed]))
        if best_within and (best is None or best_within[0] > best[0]):
            best = (best_within[0], best_within[1], label, cell)
    if best:
        section.answers.append(f"Most throughput with p99 within the SLO: {best[2]}: {fmt(best[0])} req/s "
                               f"(at load point {best[1]}){_marks(best[3])}.")
    section.tables.append(table)
    for extra, answers in (side_by_side(records), loadgen_agreement(records)):
        if extra.rows:
            section.answers += answers
            section.tables.append(extra)
    if series:
        slo_line = ("y", min(s for s in slos if s is not None) * MS, "p99 SLO") if any(slos) else None
        section.plot = Plot("plot-serving", "Latency–throughput curves, closed loop at concurrency 1 … N",
                            "throughput (req/s, higher is better)", "p99 latency (ms, lower is better, log scale)",
                            series=series, log_y=True, reference=slo_line,
                            caption="One line per server and batching setting, points in order of concurrency; "
                                    "hollow points: p99 above the SLO or below its sample floor (not claimed). "
                                    "Open-loop points are in the table's figures and each record.")
    section.notes.append("Throughput with p99 ≤ SLO is read off the curve (the highest load point whose p99 is within "
                         "the SLO); goodput as recorded is the scenario's own figure, which may also require a "
                         "stable load point.")
    section.notes += _skipped(records, "serving")
    return section


# ---------------------------------------------------------------- monitoring

POWER = re.compile(r"^power\.window_(?P<window>\d+)\.shift_(?P<shift>[\d.]+)$")


def monitoring(records: list[Record]) -> Section:
    section = Section("monitoring", "Monitoring: false alarms and power of drift detection",
                      "How often does the drift detector cry wolf with and without multiple-testing correction, "
                      "and how large a shift does it catch?")
    table = Table([Column("features"), Column("data"), Column("machine"),
                   Column("false-alarm rate, uncorrected", "fraction of null windows", LOWER),
                   Column("family-wise rate, Bonferroni", "fraction of null windows", LOWER),
                   Column("false discovery rate, BH", "fraction of null windows", LOWER), Column("conformance")])
    for r in (r for r in of_family(records, "monitoring") if r.scenario == "monitoring.drift.fpr"):
        for kind in ("numeric", "categorical"):
            if r.metric(f"{kind}.false_alarm_rate_uncorrected") is None:
                continue
            table.rows.append([Cell(str(r.params.get("features", "?")), link=anchor(r)), Cell(kind),
                               Cell(machine_label(r.env)),
                               *(metric_cell(r.metric(f"{kind}.{name}"), r)
                                 for name in ("false_alarm_rate_uncorrected", "fwer_bonferroni", "fdr_bh")),
                               checks_cell(r)])
    worst = max((row for row in table.rows), key=lambda row: row[3].value or 0, default=None)
    if worst:
        section.answers.append(f"Uncorrected, {worst[0].text} {worst[1].text} features raise a false alarm in "
                               f"{worst[3].text} of null windows; corrected: Bonferroni {worst[4].text}, "
                               f"BH {worst[5].text}.")
    series = []
    for r in (r for r in of_family(records, "monitoring") if r.scenario == "monitoring.drift.power"):
        known = r.provenance.get("known_shift", {})
        curves: dict[int, list[tuple[float, Metric]]] = {}
        for m in r.metrics:
            if match := POWER.match(m.name):
                curves.setdefault(int(match["window"]), []).append((float(match["shift"]), m))
        window = known.get("window") if known.get("window") in curves else max(curves, default=None)
        if window is None:
            continue
        curve = sorted(curves[window], key=lambda p: p[0])
        series.append(Series(f"{r.params.get('dataset', '?')}, window {window} · {machine_label(r.env)}",
                             [s for s, _ in curve], [m.value for _, m in curve], [m.ci_low for _, m in curve],
                             [m.ci_high for _, m in curve]))
        at_known = r.metric("power_at_known_shift")
        if at_known:
            section.answers.append(f"Power on {r.params.get('dataset', '?')} at shift {known.get('shift', '?')}, "
                                   f"window {window}: {metric_cell(at_known, r).text}.")
    section.tables.append(table)
    if series:
        section.plot = Plot("plot-monitoring", "Power curves of the drift detector (BH-corrected)",
                            "shift (the dataset's shift parameter, unitless; see each record's provenance)",
                            "power (fraction of windows flagged, higher is better)", series=series,
                            caption="Error bars: 95% CI over repetitions; at shift 0 the curve is the false-alarm "
                                    "rate.")
    return section


# ---------------------------------------------------------------- tuning

REGRET = re.compile(r"^(?P<method>\w+)\.regret@(?P<trials>\d+)$")


def tuning(records: list[Record]) -> Section:
    section = Section("tuning", "Tuning: regret of samplers and savings of pruning",
                      "Does TPE find better configurations than random search for the same budget, and how much "
                      "work does pruning save?")
    regret = Table([Column("objective"), Column("machine"), Column("budget", "trials"),
                    Column("TPE regret at budget", "objective units", LOWER),
                    Column("random regret at budget", "objective units", LOWER),
                    Column("log10 regret, TPE − random", "decades", LOWER)])
    pruning = Table([Column("scenario"), Column("setting"), Column("machine"),
                     Column("epochs saved", "fraction of the unpruned epochs", HIGHER),
                     Column("hopeless trials pruned", "fraction", HIGHER),
                     Column("best validation accuracy", "fraction", HIGHER), Column("conformance")],
                    caption="Pruning savings")
    series = []
    for r in of_family(records, "tuning"):
        link = anchor(r)
        if r.scenario == "tuning.quality":
            budget = int(r.provenance.get("budget_trials") or max(
                (int(m["trials"]) for x in r.metrics if (m := REGRET.match(x.name))), default=0))
            delta = r.provenance.get("log10_regret_delta_tpe_minus_random", {})
            ci = delta.get("ci", [math.nan, math.nan])
            delta_cell = number_cell(delta.get("mean"), r, 1, *ci) if "mean" in delta else Cell("-")
            regret.rows.append([Cell(str(r.params.get("function", "?")), link=link), Cell(machine_label(r.env)),
                                Cell(str(budget), float(budget)),
                                metric_cell(r.metric(f"tpe.regret@{budget}"), r),
                                metric_cell(r.metric(f"random.regret@{budget}"), r), delta_cell])
            if "mean" in delta:
                verdict = ("TPE better" if ci[1] < 0 else "random better" if ci[0] > 0 else "no clear winner")
                section.answers.append(f"{r.params.get('function', '?')}: log10 regret TPE − random "
                                       f"{delta_cell.text} decades ({verdict}).")
            for method, curve in (r.provenance.get("median_regret_curves") or {}).items():
                series.append(Series(f"{r.params.get('function', '?')} · {method}", list(range(1, len(curve) + 1)),
                                     [float(v) for v in curve]))
        elif r.metric("epochs_saved") is not None:
            pruning.rows.append([Cell(r.scenario, link=link), Cell(params_text(r.params)), Cell(machine_label(r.env)),
                                 metric_cell(r.metric("epochs_saved"), r),
                                 metric_cell(r.metric("bad_trials_pruned"), r),
                                 metric_cell(r.metric("best_val_accuracy"), r), checks_cell(r)])
    for row in pruning.rows:
        section.answers.append(f"{row[0].text}: pruning saved {row[3].text} of epochs.")
    section.tables += [regret, pruning]
    if series:
        section.plot = Plot("plot-tuning", "Median regret over trials", "trials (count, budget spent)",
                            "median regret over seeds (objective units, lower is better, log scale)",
                            series=series, log_y=True)
    return section


# ---------------------------------------------------------------- tracking


def tracking(records: list[Record]) -> Section:
    section = Section("tracking", "Tracking: what logging costs a training loop",
                      "How many training steps does logging one step's metrics cost with each tracker?")
    table = Table([Column("tool"), Column("setting"), Column("machine"),
                   Column("logging cost", "training steps per logged step", LOWER),
                   Column("log call", "ms", LOWER), Column("flush per logged step", "ms", LOWER),
                   Column("training step", "ms", LOWER), Column("conformance")])
    points = []
    for r in of_family(records, "tracking"):
        link = anchor(r)
        cost = r.metric("log_cost_in_train_steps")
        tool = r.scenario.split(".", 1)[1]
        setting = params_text(r.params)
        table.rows.append([Cell(tool, link=link), Cell(setting), Cell(machine_label(r.env)), metric_cell(cost, r),
                           metric_cell(r.metric("log_step_time"), r, MS),
                           metric_cell(r.metric("flush_per_logged_step"), r, MS),
                           metric_cell(r.metric("train_step_time"), r, MS), checks_cell(r)])
        if cost is not None:
            points.append((f"{tool} · {setting} · {machine_label(r.env)}", cost, r))
    cheapest = min(points, key=lambda p: p[1].value, default=None)
    if cheapest:
        section.answers.append(f"Cheapest: {cheapest[0]}, {metric_cell(cheapest[1], cheapest[2]).text} training steps "
                               f"per logged step{_marks(metric_cell(cheapest[1], cheapest[2]))}.")
    section.tables.append(table)
    section.plot = _bars("plot-tracking", "Logging cost per training step",
                         "logging cost (training steps per logged step, lower is better)",
                         "tool · setting · machine (configuration)", points)
    return section


FAMILIES: tuple[Callable[[list[Record]], Section], ...] = (training, distributed, optimize, serving, monitoring,
                                                            tuning, tracking)
FAMILY_IDS = tuple(builder.__name__ for builder in FAMILIES)


def family_sections(records: list[Record]) -> list[Section]:
    sections = [builder(records) for builder in FAMILIES]
    for section in sections:
        measured = of_family(records, section.id)
        if measured:
            section.notes.insert(0, "From: " + "; ".join(sorted(_origins(measured))) + ".")
        else:
            section.answers.insert(0, f"No {section.id} records in these results.")
    return sections


def _origins(records: list[Record]) -> set[str]:
    """Which machine, profile and commits a section's numbers come from (dirty ones said so)."""
    commits: dict[tuple[str, str], set[str]] = {}
    for r in records:
        commits.setdefault((machine_label(r.env), r.profile), set()).add(
            r.git.commit[:8] + (" (dirty)" if r.git.dirty else ""))
    return {f"{machine}, profile {profile}, commit {', '.join(sorted(c))}" for (machine, profile), c in commits.items()}

