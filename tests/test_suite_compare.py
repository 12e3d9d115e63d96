"""Gate specs are a tiny language; the gate needs effect *and* significance."""

from __future__ import annotations

import pytest

from suite import stats
from suite.compare import DEFAULT_THRESHOLD, RegressionCheck, compare, gate
from suite.errors import SuiteError
from suite.schema import Check, Status
from tests.factories import record, timings


@pytest.mark.parametrize(("spec", "expected"), [
    ("throughput:-5%", RegressionCheck("throughput", "value", False, 0.05)),
    ("latency.p99:+10%", RegressionCheck("latency", "p99", True, 0.10)),
    ("step_time.median:+2.5%", RegressionCheck("step_time", "median", True, 0.025)),
    ("fp32_*:-1%", RegressionCheck("fp32_*", "value", False, 0.01)),
])
def test_specs_parse(spec: str, expected: RegressionCheck) -> None:
    assert RegressionCheck.parse(spec) == expected


@pytest.mark.parametrize("spec", ["throughput", "throughput:5%", "throughput:-5", "latency.p42:+1%", ":+1%", "a:+x%"])
def test_bad_specs_get_a_clear_error(spec: str) -> None:
    with pytest.raises(SuiteError, match="bad --fail-on spec"):
        RegressionCheck.parse(spec)


def test_a_a_comparison_passes() -> None:
    result = gate([record(timings(0.010, seed=1))], [record(timings(0.010, seed=2))])
    assert result.passed, result.failures
    assert {c.verdict for c in result.comparisons} == {"same"}


def test_planted_20_percent_slowdown_fails() -> None:
    result = gate([record(timings(0.010, seed=1))], [record(timings(0.012, seed=2))])
    assert not result.passed
    failed = {c.metric for c in result.comparisons if c.regressed}
    assert failed == {"step_time", "throughput"}


def test_a_small_slowdown_under_threshold_passes() -> None:
    result = gate([record(timings(0.010, seed=1))], [record(timings(0.0105, seed=2))])
    assert result.passed
    assert DEFAULT_THRESHOLD == 0.10


def test_an_effect_without_significance_does_not_fail() -> None:
    noisy = [0.01, 0.02, 0.005, 0.03, 0.012]
    slower = [x * 1.3 for x in reversed(noisy)]
    result = gate([record(noisy)], [record(slower)], [RegressionCheck.parse("step_time:+10%")])
    row = next(c for c in result.comparisons if c.metric == "step_time")
    assert row.ratio > 1.1 and row.p_value is not None and row.p_value > 0.05
    assert not row.regressed


def test_explicit_spec_tightens_the_threshold() -> None:
    base, cur = [record(timings(0.010, seed=1))], [record(timings(0.0106, seed=2))]
    assert gate(base, cur).passed
    assert not gate(base, cur, [RegressionCheck.parse("step_time:+5%")]).passed


def test_percentile_spec_compares_that_percentile() -> None:
    base, cur = record(timings(0.010, seed=1, n=700)), record(timings(0.010, seed=2, n=700))
    rows = compare([base], [cur], [RegressionCheck.parse("step_time.p99:+10%")])
    row = next(r for r in rows if r.metric == "step_time")
    p99 = next(p.value for p in base.metrics[0].percentiles if p.q == 99)
    assert row.stat == "p99" and row.baseline == pytest.approx(p99)


def test_deterministic_metrics_are_judged_by_threshold_alone() -> None:
    acc = lambda v: stats.scalar("eval_accuracy", "fraction", True, v)  # noqa: E731
    base = record(timings(0.01, 1), extra_metrics=[acc(0.98)])
    cur = record(timings(0.01, 2), extra_metrics=[acc(0.80)])
    assert not gate([base], [cur]).passed


def test_failed_conformance_check_fails_the_gate() -> None:
    bad = Check(name="x.equal", passed=False, detail="planted")
    result = gate([record(timings(0.01, 1))], [record(timings(0.01, 2), checks=[bad], status=Status.failed)])
    assert not result.passed and "check x.equal failed" in result.failures[0]


def test_newly_broken_scenario_fails_the_gate() -> None:
    broken = record(timings(0.01, 2), status=Status.error)
    assert not gate([record(timings(0.01, 1))], [broken]).passed


def test_cross_machine_comparison_is_refused_unless_asked() -> None:
    base, cur = [record(timings(0.01, 1), machine="a")], [record(timings(0.01, 2), machine="b")]
    with pytest.raises(SuiteError, match="different machines"):
        gate(base, cur)
    assert gate(base, cur, allow_cross_machine=True).passed
