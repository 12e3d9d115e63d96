"""Compare two result sets metric by metric, and gate on regressions, on run-level statistics.

The process run is the unit of replication, so a verdict is decided on the runs' own
estimates (`Metric.run_values`), never on the samples inside one run (they share its luck).
Per metric, three verdicts:

- **regressed**: the effect is beyond its threshold *and* significant at the run level
  (one-sided t-test on log run values, or on their difference for metrics that can be zero
  or negative), after Benjamini-Hochberg control of the false discovery rate across every
  metric of the comparison (scipy.stats.false_discovery_control);
- **pass**: the upper confidence bound of the effect is under the threshold, so a
  regression as large as the threshold is ruled out;
- **inconclusive**: neither: the noise is too large to resolve the threshold. The row says
  the minimum detectable effect and how many more runs per side would settle it.

The threshold is the larger of the rule's and the calibrated A/A noise floor of this
machine, scenario and metric (`mlsuite calibrate`), and the row says which applied. Runs
measured while the host was oversubscribed are dropped from the evidence. Records from
different machines are refused unless asked for; records whose scenario source changed are
"not comparable" unless asked for (asv's convention).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

from suite.errors import SuiteError
from suite.schema import Metric, Record, Status

ALPHA = 0.05  # false discovery rate across the metrics of one comparison; one-sided per metric
POWER = 0.80  # for the minimum detectable effect
# The smallest change worth a failed build when nothing is calibrated. A/A noise on a
# shared 2-core host exceeds it for some metrics: `mlsuite calibrate` raises it there.
DEFAULT_THRESHOLD = 0.05

# NAME[.STAT]:(+|-)N% (relative) or NAME[.STAT]:(+|-)N (absolute, for metrics that can be
# zero or negative). NAME is a glob over metric names.
SPEC_PATTERN = re.compile(r"^(?P<metric>[A-Za-z0-9_*?\[\]-]+(?:\.[A-Za-z0-9_*?\[\]-]+)*?)"
                          r"(?:\.(?P<stat>p50|p90|p95|p99|median|value))?"
                          r":(?P<sign>[+-])(?P<amount>\d+(?:\.\d+)?(?:e-?\d+)?)(?P<percent>%?)$")


class Verdict(StrEnum):
    passed = "pass"
    regressed = "regressed"
    inconclusive = "inconclusive"
    not_comparable = "not comparable"  # the scenario's source changed
    not_gated = "not gated"  # a percentile below its sample floor


@dataclass(frozen=True)
class RegressionCheck:
    """`throughput:-5%`: fail when throughput falls by more than 5%.
    `latency.p99:+10%`: fail when latency's p99 rises by more than 10%.
    `accuracy_delta:-0.01`: fail when it falls by more than 0.01 (absolute)."""

    metric: str  # a glob over metric names
    stat: str  # value, median or a percentile
    worse_if_increase: bool
    threshold: float  # a fraction, or an absolute amount when `absolute`
    absolute: bool = False

    @classmethod
    def parse(cls, spec: str) -> RegressionCheck:
        match = SPEC_PATTERN.match(spec.strip())
        if not match:
            raise SuiteError(f"bad --fail-on spec {spec!r}; expected NAME[.STAT]:(+|-)N% "
                             f"such as throughput:-5% or latency.p99:+10%, or NAME:(+|-)N for an absolute change")
        absolute = not match["percent"]
        amount = float(match["amount"])
        return cls(metric=match["metric"], stat=match["stat"] or "value", worse_if_increase=match["sign"] == "+",
                   threshold=amount if absolute else amount / 100, absolute=absolute)

    @classmethod
    def default_for(cls, metric: Metric) -> RegressionCheck:
        return cls(metric=metric.name, stat="value", worse_if_increase=not metric.higher_is_better,
                   threshold=DEFAULT_THRESHOLD)

    def applies_to(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.metric)

    def describe(self) -> str:
        sign = "+" if self.worse_if_increase else "-"
        amount = f"{self.threshold:g}" if self.absolute else f"{self.threshold:.0%}"
        return f"{self.metric}.{self.stat}:{sign}{amount}"


def run_statistics(metric: Metric, stat: str) -> list[float]:
    """The metric's statistic in each process run."""
    if stat in ("value", "median") or not metric.run_sizes:
        return list(metric.run_values) or [metric.value]
    q = float(stat[1:])
    bounds = np.cumsum([0, *metric.run_sizes])
    return [float(np.percentile(metric.samples[a:b], q)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def percentile_claimed(metric: Metric, stat: str) -> bool:
    if stat in ("value", "median"):
        return True
    found = next((p for p in metric.percentiles if p.q == float(stat[1:])), None)
    return found is not None and found.claimed


@dataclass(frozen=True)
class Effect:
    """The change from baseline to current in the bad direction (positive = worse): the
    log ratio of run values for positive metrics, else their difference."""

    estimate: float
    se: float
    df: float
    by_ratio: bool
    n_base: int
    n_cur: int

    def p_worse(self) -> float:
        """One-sided p-value of 'no worse than before'."""
        from scipy.stats import t

        if self.se == 0:
            return 0.0 if self.estimate > 0 else 1.0
        return float(t.sf(self.estimate / self.se, self.df))

    def upper(self, alpha: float = ALPHA) -> float:
        from scipy.stats import t

        return self.estimate + (float(t.ppf(1 - alpha, self.df)) * self.se if self.se else 0.0)

    def detectable(self, alpha: float) -> float:
        """Minimum detectable effect at this noise: (t_{1-alpha} + t_{power}) x SE."""
        from scipy.stats import t

        return (float(t.ppf(1 - alpha, self.df)) + float(t.ppf(POWER, self.df))) * self.se


def measure_effect(base: Sequence[float], cur: Sequence[float], worse_if_increase: bool, *,
                   paired: bool = False, spread_floor: float | None = None, exact: bool = False) -> Effect:
    """Welch (or, for runs paired in time as `ab` takes them, paired) estimate of the
    effect and its standard error. `spread_floor` is the calibrated between-run standard
    deviation (None: not calibrated): a few runs can look quieter than the machine is,
    never quieter than that; and with it, one run per side can be judged (a count whose
    calibrated runs all agreed exactly has a spread of 0, not an unknown one)."""
    a, b = np.asarray(base, dtype=float), np.asarray(cur, dtype=float)
    by_ratio = bool(np.all(a > 0) and np.all(b > 0))
    if by_ratio:
        a, b = np.log(a), np.log(b)
    sign = 1.0 if worse_if_increase else -1.0
    least_sd = spread_floor or 0.0
    if paired and a.size == b.size and a.size >= 2:
        d = sign * (b - a)
        sd = max(float(np.std(d, ddof=1)), least_sd * math.sqrt(2))
        return Effect(float(d.mean()), sd / math.sqrt(d.size), d.size - 1, by_ratio, a.size, b.size)
    estimate = sign * float(b.mean() - a.mean())
    if exact:  # deterministic for a fixed seed (accuracy on a pinned eval set): no noise to test
        return Effect(estimate, 0.0, 1.0, by_ratio, a.size, b.size)
    if (a.size < 2 or b.size < 2) and spread_floor is None:
        # One run on a side and no calibration: its noise is unknown unless nothing moved.
        return Effect(estimate, math.inf if estimate else 0.0, 1.0, by_ratio, a.size, b.size)
    va = max(float(np.var(a, ddof=1)) if a.size > 1 else 0.0, least_sd**2) / a.size
    vb = max(float(np.var(b, ddof=1)) if b.size > 1 else 0.0, least_sd**2) / b.size
    se = math.sqrt(va + vb)
    dof = [(v**2 / (n - 1)) for v, n in ((va, a.size), (vb, b.size)) if n > 1]
    df = (va + vb) ** 2 / sum(dof) if se and sum(dof) else max(1.0, a.size + b.size - 2.0)
    return Effect(estimate, se, df, by_ratio, a.size, b.size)


@dataclass(frozen=True)
class Floor:
    """Calibrated A/A noise of one machine x scenario x params x metric."""

    thresholds: dict[int, float]  # runs per side -> the A/A effect a comparison stays under (99%)
    spread: float  # between-run standard deviation (log for positive metrics)
    runs: int  # process runs the calibration took

    def at(self, runs: int) -> float:
        """The floor for comparisons with this many runs per side (the calibrated count at
        or below it: fewer runs are noisier, so never a smaller floor than they deserve)."""
        fitting = [r for r in self.thresholds if r <= runs]
        return self.thresholds[max(fitting) if fitting else min(self.thresholds)]


@dataclass(frozen=True)
class Comparison:
    scenario: str
    params: dict[str, object]
    metric: str
    unit: str
    stat: str
    baseline: float
    current: float
    ratio: float  # current / baseline (nan when not both positive)
    change: float  # the effect in the bad direction: log ratio or difference
    change_ci: tuple[float, float]
    p_value: float | None  # one-sided, before the false-discovery control
    threshold: float
    threshold_source: str  # "rule", "calibrated" or "default"
    rule: str
    verdict: Verdict
    detail: str = ""
    detectable: float | None = None  # minimum detectable effect, when inconclusive
    more_runs: int | None = None  # runs per side that would settle it, when inconclusive

    @property
    def regressed(self) -> bool:
        return self.verdict is Verdict.regressed

    def to_json(self) -> dict[str, object]:
        """Strict JSON: an undefined number (an identical pair's threshold and CI are NaN) is
        null, since CI scripts read `mlsuite ab`'s verdicts with jq and other strict parsers."""
        return {**{name: _null_if_nan(value) for name, value in self.__dict__.items()},
                "change_ci": [_null_if_nan(end) for end in self.change_ci], "verdict": self.verdict.value}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Comparison:
        """Back from `to_json`: null in a float field is NaN again."""
        floats = {f.name for f in fields(cls) if f.type == "float"}
        return cls(**{**row, **{name: math.nan if row[name] is None else row[name] for name in floats},
                      "change_ci": tuple(math.nan if end is None else end for end in row["change_ci"]),
                      "verdict": Verdict(row["verdict"])})


def _null_if_nan(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _threshold(rule: RegressionCheck, effect: Effect, base_value: float, cur_value: float,
               floor: Floor | None, rule_given: bool) -> tuple[float, str]:
    """In the effect's own units: log(1 + fraction) by ratio; absolute by difference (a
    relative rule is taken relative to the larger magnitude of the two)."""
    if effect.by_ratio:
        own = math.log1p(rule.threshold) if not rule.absolute else math.log1p(rule.threshold / abs(base_value))
    else:
        own = rule.threshold if rule.absolute else rule.threshold * max(abs(base_value), abs(cur_value))
    source = "rule" if rule_given else "default"
    if floor is not None and floor.at(min(effect.n_base, effect.n_cur)) > own:
        return floor.at(min(effect.n_base, effect.n_cur)), "calibrated"
    return own, source


def _judge(effect: Effect, threshold: float, alpha_mde: float) -> tuple[Verdict, float | None, int | None]:
    """Before the false-discovery control: pass, or inconclusive with what it would take.
    (Regressed is decided across metrics, in `decide`.)"""
    if effect.se == 0 and effect.estimate <= threshold:
        return Verdict.passed, None, None
    if effect.upper() < threshold:
        return Verdict.passed, None, None
    if not math.isfinite(effect.se):
        return Verdict.inconclusive, None, None  # one run per side, uncalibrated: noise unknown
    detectable = effect.detectable(alpha_mde)
    runs = max(effect.n_base, effect.n_cur)
    needed = math.ceil(runs * (detectable / threshold) ** 2) if threshold > 0 else None
    return Verdict.inconclusive, detectable, (needed - runs) if needed else None


@dataclass
class Pending:
    """A metric comparison awaiting the false-discovery control across the whole set."""

    base: Record
    cur: Record
    a: Metric
    b: Metric
    rule: RegressionCheck
    rule_given: bool
    floor: Floor | None
    effect: Effect | None = None  # over every run: what a pass is judged on
    evidence: Effect | None = None  # without oversubscribed runs: what a regression is judged on
    fixed: Verdict | None = None
    detail: str = ""
    values: tuple[float, float] = field(default=(math.nan, math.nan))


def _kept_runs(record: Record, metric: Metric, stat: str) -> list[float]:
    """The metric's run statistics, without runs measured on an oversubscribed host (a
    count of executed instructions does not move with load: those runs all count)."""
    values = run_statistics(metric, stat)
    flags = [run.oversubscribed for run in record.runs]
    if len(flags) != len(values) or not metric.moves_with_load:
        return values
    return [v for v, bad in zip(values, flags) if not bad]


def _prepare(item: Pending, paired: bool, allow_source_change: bool) -> Pending:
    stat = item.rule.stat
    a_runs, b_runs = run_statistics(item.a, stat), run_statistics(item.b, stat)
    item.values = (float(np.median(a_runs)), float(np.median(b_runs)))
    if not all(math.isfinite(v) for v in b_runs):
        item.fixed, item.detail = Verdict.regressed, "current value is not finite"
        return item
    if item.base.source_hash != item.cur.source_hash and not allow_source_change:
        item.fixed, item.detail = Verdict.not_comparable, "scenario source changed"
        return item
    if not (percentile_claimed(item.a, stat) and percentile_claimed(item.b, stat)):
        item.fixed, item.detail = Verdict.not_gated, f"{stat} below its sample floor"
        return item
    if a_runs == b_runs:
        item.fixed, item.detail = Verdict.passed, "identical runs: the same measurement on both sides"
        return item
    spread = item.floor.spread if item.floor else None
    exact = item.a.kind == item.b.kind == "exact"
    item.effect = measure_effect(a_runs, b_runs, item.rule.worse_if_increase, spread_floor=spread, exact=exact,
                                 paired=paired)
    kept_a, kept_b = _kept_runs(item.base, item.a, stat), _kept_runs(item.cur, item.b, stat)
    dropped = len(a_runs) - len(kept_a) + len(b_runs) - len(kept_b)
    item.evidence = item.effect
    if dropped:
        item.detail = f"{dropped} oversubscribed run(s) not taken as evidence of a regression"
        item.evidence = measure_effect(kept_a, kept_b, item.rule.worse_if_increase, spread_floor=spread,
                                       exact=exact) if kept_a and kept_b else None
    return item


def _comparison(item: Pending, verdict: Verdict, p: float | None, threshold: float, source: str,
                detectable: float | None = None, more_runs: int | None = None) -> Comparison:
    va, vb = item.values
    effect = item.effect
    ci = (math.nan, math.nan)
    if effect is not None and math.isfinite(effect.se):
        from scipy.stats import t

        half = float(t.ppf(1 - ALPHA / 2, effect.df)) * effect.se
        ci = (effect.estimate - half, effect.estimate + half)
    return Comparison(
        scenario=item.cur.scenario, params=item.cur.params, metric=item.b.name, unit=item.b.unit,
        stat=item.rule.stat, baseline=va, current=vb, ratio=vb / va if va > 0 and vb > 0 else math.nan,
        change=effect.estimate if effect else math.nan, change_ci=ci, p_value=p, threshold=threshold,
        threshold_source=source, rule=item.rule.describe(), verdict=verdict, detail=item.detail,
        detectable=detectable, more_runs=more_runs)


def decide(items: list[Pending], paired: bool = False, allow_source_change: bool = False) -> list[Comparison]:
    """Verdicts for a set of metric comparisons, with the false discovery rate controlled
    across all of them."""
    from scipy.stats import false_discovery_control

    prepared = [_prepare(item, paired, allow_source_change) for item in items]
    tested = [item for item in prepared if item.evidence is not None]
    p_values = [item.evidence.p_worse() for item in tested]  # type: ignore[union-attr]
    adjusted = dict(zip(map(id, tested), false_discovery_control(p_values) if p_values else []))
    alpha_mde = ALPHA / max(1, len(tested))
    rows = []
    for item in prepared:
        if item.effect is None:
            rows.append(_comparison(item, item.fixed or Verdict.inconclusive, None, math.nan, "-"))
            continue
        threshold, source = _threshold(item.rule, item.effect, *item.values, item.floor, item.rule_given)
        q = float(adjusted[id(item)]) if id(item) in adjusted else None
        if q is not None and q < ALPHA and item.evidence.estimate > threshold:  # type: ignore[union-attr]
            rows.append(_comparison(item, Verdict.regressed, q, threshold, source))
            continue
        verdict, detectable, more = _judge(item.effect, threshold, alpha_mde)
        if verdict is Verdict.inconclusive and not math.isfinite(item.effect.se):
            item.detail = "one run per side and no calibration: replicate or run `mlsuite calibrate`"
        rows.append(_comparison(item, verdict, q, threshold, source, detectable, more))
    return rows


def machines(records: list[Record]) -> set[str]:
    return {r.env.machine_id for r in records}


def pending(baseline: list[Record], current: list[Record], rules: list[RegressionCheck] | None = None,
            floors: dict[tuple[str, str, str], Floor] | None = None) -> list[Pending]:
    """Every metric present in both, under each matching rule (or its default)."""
    base_by_key = {r.key: r for r in baseline}
    items = []
    for cur in current:
        base = base_by_key.get(cur.key)
        if base is None:
            continue
        for b in cur.metrics:
            a = base.metric(b.name)
            if a is None:
                continue
            matching = [r for r in rules or [] if r.applies_to(b.name)]
            floor = (floors or {}).get((cur.scenario, cur.config_hash, b.name))
            for rule in matching or [RegressionCheck.default_for(b)]:
                items.append(Pending(base, cur, a, b, rule, bool(matching), floor))
    return items


def compare(baseline: list[Record], current: list[Record], rules: list[RegressionCheck] | None = None,
            allow_cross_machine: bool = False, *, floors: dict[tuple[str, str, str], Floor] | None = None,
            paired: bool = False, allow_source_change: bool = False) -> list[Comparison]:
    if not allow_cross_machine and machines(baseline) != machines(current):
        raise SuiteError(
            f"records come from different machines ({sorted(machines(baseline))} vs "
            f"{sorted(machines(current))}); pass --allow-cross-machine to compare anyway")
    return decide(pending(baseline, current, rules, floors), paired, allow_source_change)


@dataclass(frozen=True)
class GateResult:
    comparisons: list[Comparison]
    failures: list[str]
    known_failures: list[str] = field(default_factory=list)  # checks that failed in the baseline too
    inconclusive_checks: list[str] = field(default_factory=list)  # checks the noise left unsettled

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def inconclusive(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.inconclusive]


def lost_scenarios(baseline: list[Record], current: list[Record]) -> list[str]:
    """Scenarios that had a working record in the baseline and are missing, skipped or
    broken now: each one is a failure, named."""
    by_key = {r.key: r for r in current}
    lost = []
    for base in baseline:
        if base.status in (Status.skipped, Status.error):
            continue
        cur = by_key.get(base.key)
        if cur is None:
            lost.append(f"{base.scenario} {base.params}: missing from current")
        elif cur.status is Status.skipped:
            lost.append(f"{cur.scenario} {cur.params}: now skipped: {cur.reason}")
        elif cur.status is Status.error:
            lost.append(f"{cur.scenario} {cur.params}: now errors: {cur.reason}")
    return lost


def gate(baseline: list[Record], current: list[Record], rules: list[RegressionCheck] | None = None,
         allow_cross_machine: bool = False, *, floors: dict[tuple[str, str, str], Floor] | None = None,
         paired: bool = False, allow_source_change: bool = False) -> GateResult:
    """Fails on a regression, a conformance check that fails now and did not in the
    baseline, or a scenario that worked in the baseline and is missing, skipped or broken
    now. A check that failed in the baseline too is a known failure: listed, not blocking."""
    rows = compare(baseline, current, rules, allow_cross_machine, floors=floors, paired=paired,
                   allow_source_change=allow_source_change)
    failures = [f"{r.scenario} {r.params}: {r.metric}.{r.stat} regressed ({describe_change(r)}; {r.rule}"
                f"{', ' + r.detail if r.detail else ''})" for r in rows if r.regressed]
    base_by_key = {r.key: r for r in baseline}
    known: list[str] = []
    unsettled: list[str] = []
    for cur in current:
        base = base_by_key.get(cur.key)
        if cur.status is Status.error and base is not None and base.status is Status.error:
            known.append(f"{cur.scenario} {cur.params}: still errors: {cur.reason}")
        failed_before = {c.name for c in base.checks if c.failed} if base else set()
        for check in cur.checks:
            if check.inconclusive:
                unsettled.append(f"{cur.scenario} {cur.params}: check {check.name} inconclusive ({check.detail})")
            elif check.failed:
                line = f"{cur.scenario} {cur.params}: check {check.name} failed ({check.detail})"
                (known if check.name in failed_before else failures).append(line)
    failures += lost_scenarios(baseline, current)
    return GateResult(comparisons=rows, failures=failures, known_failures=known, inconclusive_checks=unsettled)


def describe_detectable(row: Comparison) -> str:
    """The minimum detectable effect in the change's own terms."""
    if row.detectable is None:
        return ""
    size = f"{math.expm1(row.detectable):.1%}" if math.isfinite(row.ratio) else f"{row.detectable:.3g} {row.unit}"
    more = f", ~{row.more_runs} more runs per side would resolve the threshold" if row.more_runs else ""
    return f"detectable {size}{more}"


def describe_change(row: Comparison) -> str:
    """The change in words a reader can check: a percentage for ratios, else a difference."""
    if not math.isfinite(row.change):
        return row.detail or "-"
    if math.isfinite(row.ratio):
        return f"{row.ratio - 1:+.1%} (threshold {math.expm1(row.threshold):.1%} {row.threshold_source})"
    return f"{row.current - row.baseline:+.4g} {row.unit} (threshold {row.threshold:.4g} {row.threshold_source})"
