"""Compare two result sets metric by metric, and gate on regressions.

A regression is an effect beyond its threshold *and* a significant Mann-Whitney U test on
the raw samples (as asv does). A metric with fewer than MIN_TESTABLE samples on either side
(accuracy on a fixed eval set, a model size) is deterministic for a fixed seed, so the
threshold alone decides. Records from different machines are refused unless asked for.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from suite import stats
from suite.errors import SuiteError
from suite.schema import Metric, Record, Status, load_records

ALPHA = 0.05
MIN_TESTABLE = 5
# Between A/A noise and the smallest regression worth a failed build: the same commit run
# twice on the 2-core CPU host must pass at it and a planted 20% slowdown must fail
# (tests/test_suite_gate_e2e.py). Tighten per metric with --fail-on.
DEFAULT_THRESHOLD = 0.10

# NAME[.STAT]:(+|-)N% -- NAME is a glob over metric names (which never contain dots).
SPEC_PATTERN = re.compile(r"^(?P<metric>[A-Za-z0-9_*?\[\]-]+)(?:\.(?P<stat>p50|p90|p95|p99|median|value))?"
                          r":(?P<sign>[+-])(?P<amount>\d+(?:\.\d+)?)%$")


@dataclass(frozen=True)
class RegressionCheck:
    """`throughput:-5%`: fail when throughput falls by more than 5%.
    `latency.p99:+10%`: fail when latency's p99 rises by more than 10%."""

    metric: str  # a glob over metric names
    stat: str  # value, median or a percentile
    worse_if_increase: bool
    threshold: float  # a fraction

    @classmethod
    def parse(cls, spec: str) -> RegressionCheck:
        match = SPEC_PATTERN.match(spec.strip())
        if not match:
            raise SuiteError(f"bad --fail-on spec {spec!r}; expected NAME[.STAT]:(+|-)N% "
                             f"such as throughput:-5% or latency.p99:+10%")
        return cls(metric=match["metric"], stat=match["stat"] or "value",
                   worse_if_increase=match["sign"] == "+", threshold=float(match["amount"]) / 100)

    @classmethod
    def default_for(cls, metric: Metric) -> RegressionCheck:
        return cls(metric=metric.name, stat="value", worse_if_increase=not metric.higher_is_better,
                   threshold=DEFAULT_THRESHOLD)

    def applies_to(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.metric)

    def describe(self) -> str:
        sign = "+" if self.worse_if_increase else "-"
        return f"{self.metric}.{self.stat}:{sign}{self.threshold:.0%}"


def statistic(metric: Metric, stat: str) -> float:
    if stat == "value":
        return metric.value
    if stat == "median":
        return metric.median
    q = float(stat[1:])
    found = next((p for p in metric.percentiles if p.q == q), None)
    if found is None:
        raise SuiteError(f"metric {metric.name} has no {stat} (n={metric.n})")
    return found.value


@dataclass(frozen=True)
class Comparison:
    scenario: str
    params: dict[str, object]
    metric: str
    unit: str
    stat: str
    baseline: float
    current: float
    ratio: float
    ratio_ci: tuple[float, float]
    p_value: float | None  # None: too few samples to test
    regressed: bool
    improved: bool
    rule: str

    @property
    def verdict(self) -> str:
        if self.regressed:
            return "REGRESSED"
        if self.improved:
            return "improved"
        return "same"


def _ratio_ci(a: Metric, b: Metric) -> tuple[float, float]:
    """CI of current/baseline from the two estimates' own CIs (conservative, interval-wise)."""
    if a.ci_low <= 0 or a.ci_high <= 0:
        return math.nan, math.nan
    return b.ci_low / a.ci_high, b.ci_high / a.ci_low


def compare_metric(base: Record, cur: Record, a: Metric, b: Metric, rule: RegressionCheck) -> Comparison:
    va, vb = statistic(a, rule.stat), statistic(b, rule.stat)
    ratio = vb / va if va else math.inf
    change = ratio - 1.0
    worse = change > rule.threshold if rule.worse_if_increase else change < -rule.threshold
    better = change < -rule.threshold if rule.worse_if_increase else change > rule.threshold
    testable = len(a.samples) >= MIN_TESTABLE and len(b.samples) >= MIN_TESTABLE
    p = stats.mann_whitney_p(np.asarray(a.samples), np.asarray(b.samples)) if testable else None
    significant = p is None or p < ALPHA
    return Comparison(scenario=cur.scenario, params=cur.params, metric=b.name, unit=b.unit,
                      stat=rule.stat, baseline=va, current=vb, ratio=ratio,
                      ratio_ci=_ratio_ci(a, b), p_value=p, regressed=worse and significant,
                      improved=better and significant, rule=rule.describe())


def _machines(records: list[Record]) -> set[str]:
    return {r.env.machine_id for r in records}


def compare(baseline: list[Record], current: list[Record], rules: list[RegressionCheck] | None = None,
            allow_cross_machine: bool = False) -> list[Comparison]:
    """Every metric present in both, under the first matching rule (or its default)."""
    if not allow_cross_machine and _machines(baseline) != _machines(current):
        raise SuiteError(
            f"records come from different machines ({sorted(_machines(baseline))} vs "
            f"{sorted(_machines(current))}); pass --allow-cross-machine to compare anyway")
    base_by_key = {r.key: r for r in baseline}
    rows = []
    for cur in current:
        base = base_by_key.get(cur.key)
        if base is None:
            continue
        for b in cur.metrics:
            a = base.metric(b.name)
            if a is None:
                continue
            matching = [r for r in rules or [] if r.applies_to(b.name)]
            for rule in matching or [RegressionCheck.default_for(b)]:
                rows.append(compare_metric(base, cur, a, b, rule))
    return rows


@dataclass(frozen=True)
class GateResult:
    comparisons: list[Comparison]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def gate(baseline: list[Record], current: list[Record], rules: list[RegressionCheck] | None = None,
         allow_cross_machine: bool = False) -> GateResult:
    """Fails on a significant regression, a failed conformance check, or a scenario that
    worked in the baseline and is broken now."""
    rows = compare(baseline, current, rules, allow_cross_machine)
    failures = [f"{r.scenario} {r.params}: {r.metric} {r.rule} (ratio {r.ratio:.3f}, p={r.p_value})"
                for r in rows if r.regressed]
    base_by_key = {r.key: r for r in baseline}
    for cur in current:
        failures += [f"{cur.scenario} {cur.params}: check {c.name} failed ({c.detail})"
                     for c in cur.checks if not c.passed]
        base = base_by_key.get(cur.key)
        if cur.status is Status.error and base is not None and base.status is not Status.error:
            failures.append(f"{cur.scenario} {cur.params}: now errors: {cur.reason}")
    return GateResult(comparisons=rows, failures=failures)


def load_many(paths: list[Path]) -> list[Record]:
    records: list[Record] = []
    for path in paths:
        if path.is_dir():
            files = sorted(path.rglob("*.jsonl"))
            if not files:
                raise SuiteError(f"{path}: no .jsonl results files in it")
            for file in files:
                records += load_records(file)
        else:
            records += load_records(path)
    return records
