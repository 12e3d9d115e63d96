"""Gate specs are a tiny language; verdicts come from run-level statistics, with three
outcomes, and the arithmetic cannot lie (zeros, signs, NaN, lost scenarios)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from suite import stats
from suite.compare import DEFAULT_THRESHOLD, Floor, RegressionCheck, Verdict, compare, gate, measure_effect
from suite.errors import SuiteError
from suite.schema import Check, Status
from tests.factories import record, runs_of, timings


@pytest.mark.parametrize(("spec", "expected"), [
    ("throughput:-5%", RegressionCheck("throughput", "value", False, 0.05)),
    ("latency.p99:+10%", RegressionCheck("latency", "p99", True, 0.10)),
    ("step_time.median:+2.5%", RegressionCheck("step_time", "median", True, 0.025)),
    ("fp32_*:-1%", RegressionCheck("fp32_*", "value", False, 0.01)),
    ("p2.ddp.step_time.p90:+5%", RegressionCheck("p2.ddp.step_time", "p90", True, 0.05)),
    ("accuracy_delta:-0.01", RegressionCheck("accuracy_delta", "value", False, 0.01, absolute=True)),
])
def test_specs_parse(spec: str, expected: RegressionCheck) -> None:
    assert RegressionCheck.parse(spec) == expected


@pytest.mark.parametrize("spec", ["throughput", "throughput:5%", "latency.p42:+1%x", ":+1%", "a:+x%"])
def test_bad_specs_get_a_clear_error(spec: str) -> None:
    with pytest.raises(SuiteError, match="bad --fail-on spec"):
        RegressionCheck.parse(spec)


def verdicts(result, metric: str = "step_time") -> set[Verdict]:  # type: ignore[no-untyped-def]
    return {c.verdict for c in result.comparisons if c.metric == metric}


def test_a_a_with_replicated_runs_passes() -> None:
    result = gate([record(runs_of(0.010, seed=1))], [record(runs_of(0.010, seed=2))])
    assert result.passed, result.failures
    assert verdicts(result) == {Verdict.passed}


def test_planted_20_percent_slowdown_regresses() -> None:
    result = gate([record(runs_of(0.010, seed=1))], [record(runs_of(0.012, seed=2))])
    assert not result.passed
    assert {c.metric for c in result.comparisons if c.regressed} == {"step_time", "throughput"}


def test_a_small_slowdown_under_threshold_passes() -> None:
    result = gate([record(runs_of(0.010, seed=1, between=0.003))], [record(runs_of(0.0101, seed=2, between=0.003))])
    assert result.passed and verdicts(result) == {Verdict.passed}
    assert DEFAULT_THRESHOLD == 0.05


def test_noise_that_hides_the_threshold_is_inconclusive_with_what_it_would_take() -> None:
    base = record([timings(m, seed) for seed, m in enumerate((0.010, 0.013, 0.008))])
    cur = record([timings(m, seed + 10) for seed, m in enumerate((0.009, 0.013, 0.011))])
    (row,) = [c for c in gate([base], [cur]).comparisons if c.metric == "step_time"]
    assert row.verdict is Verdict.inconclusive
    assert row.detectable is not None and row.detectable > row.threshold
    assert row.more_runs is not None and row.more_runs > 0


def test_within_run_samples_are_not_evidence() -> None:
    """One run per side, thousands of samples, a 3x difference: inconclusive, never a
    Mann-Whitney 'significant' over samples that share one process's luck."""
    result = gate([record(timings(0.010, 1, n=2000))], [record(timings(0.030, 2, n=2000))])
    assert verdicts(result) == {Verdict.inconclusive}
    assert result.passed  # inconclusive is not a failure; the CLI exits 3 for it


def test_calibrated_floor_raises_the_threshold_and_says_so() -> None:
    base, cur = record(runs_of(0.010, seed=1, between=0.002)), record(runs_of(0.0108, seed=2, between=0.002))
    assert not gate([base], [cur]).passed  # 8% beyond the 5% default
    floor = Floor(thresholds={5: math.log(1.12)}, spread=0.05, runs=16)
    result = gate([base], [cur], floors={("fam.tech", "h" * 16, "step_time"): floor})
    (row,) = [c for c in result.comparisons if c.metric == "step_time"]
    assert row.threshold_source == "calibrated" and row.verdict is not Verdict.regressed


def test_oversubscribed_runs_are_never_evidence() -> None:
    base = record(runs_of(0.010, seed=1))
    slow_runs = runs_of(0.010, seed=2)
    slow_runs[1] = slow_runs[1] * 10  # one run measured while threads waited for a CPU
    flagged = record(slow_runs, oversubscribed=[False, True, False, False, False])
    (row,) = [c for c in gate([base], [flagged]).comparisons if c.metric == "step_time"]
    assert row.verdict is not Verdict.regressed and "oversubscribed" in row.detail
    all_flagged = record([r * 3 for r in runs_of(0.010, seed=3)], oversubscribed=[True] * 5)
    (row,) = [c for c in gate([base], [all_flagged]).comparisons if c.metric == "step_time"]
    assert row.verdict is Verdict.inconclusive


def test_zero_against_zero_is_the_same() -> None:
    zero = stats.scalar("errors", "count", False, 0.0)
    rows = compare([record(runs_of(0.01, 1), extra_metrics=[zero])], [record(runs_of(0.01, 2), extra_metrics=[zero])])
    (row,) = [r for r in rows if r.metric == "errors"]
    assert row.verdict is Verdict.passed and math.isnan(row.ratio)


def test_signed_metric_getting_worse_is_a_regression_by_difference() -> None:
    delta = lambda v: stats.scalar("accuracy_delta", "fraction", True, v, kind="exact")  # noqa: E731
    result = gate([record(runs_of(0.01, 1), extra_metrics=[delta(-0.01)])],
                  [record(runs_of(0.01, 2), extra_metrics=[delta(-0.02)])])
    (row,) = [r for r in result.comparisons if r.metric == "accuracy_delta"]
    assert row.verdict is Verdict.regressed and math.isnan(row.ratio)
    assert row.current - row.baseline == pytest.approx(-0.01)


def test_a_nan_in_current_fails() -> None:
    nan = stats.scalar("loss", "nats", False, 0.5)
    broken = nan.model_copy(update={"value": math.nan, "run_values": [math.nan]})
    result = gate([record(runs_of(0.01, 1), extra_metrics=[nan])], [record(runs_of(0.01, 2), extra_metrics=[broken])])
    assert not result.passed and "not finite" in " ".join(result.failures)


def test_a_scenario_missing_skipped_or_broken_now_fails_by_name() -> None:
    base = [record(runs_of(0.01, 1)), record(runs_of(0.01, 3), scenario="fam.other")]
    for current in ([record(runs_of(0.01, 2))],
                    [record(runs_of(0.01, 2)), record(runs_of(0.01, 4), scenario="fam.other", status=Status.skipped)],
                    [record(runs_of(0.01, 2)), record(runs_of(0.01, 4), scenario="fam.other", status=Status.error)]):
        result = gate(base, current)
        assert not result.passed and any("fam.other" in f for f in result.failures)


def test_changed_source_is_not_comparable_unless_asked() -> None:
    base, cur = record(runs_of(0.010, 1)), record(runs_of(0.020, 2), source="t" * 16)
    assert verdicts(gate([base], [cur])) == {Verdict.not_comparable}
    assert verdicts(gate([base], [cur], allow_source_change=True)) == {Verdict.regressed}


def test_a_percentile_below_its_floor_is_never_gated() -> None:
    rows = compare([record(runs_of(0.010, 1, n=20))], [record(runs_of(0.05, 2, n=20))],
                   [RegressionCheck.parse("step_time.p99:+10%")])
    assert {r.verdict for r in rows if r.metric == "step_time"} == {Verdict.not_gated}


def test_percentile_spec_compares_that_percentile_run_by_run() -> None:
    base, cur = record(runs_of(0.010, 1, n=700)), record(runs_of(0.010, 2, n=700))
    rows = compare([base], [cur], [RegressionCheck.parse("step_time.p99:+10%")])
    (row,) = [r for r in rows if r.metric == "step_time"]
    first_run = base.metrics[0].samples[:700]
    assert row.stat == "p99" and row.baseline == pytest.approx(
        np.median([np.percentile(base.metrics[0].samples[i * 700:(i + 1) * 700], 99) for i in range(5)]))
    assert np.percentile(first_run, 99) > np.median(first_run)


def test_deterministic_metrics_are_judged_by_threshold_alone() -> None:
    acc = lambda p: stats.proportion("eval_accuracy", np.arange(100) < p * 100)  # noqa: E731
    result = gate([record(runs_of(0.01, 1), extra_metrics=[acc(0.98)])],
                  [record(runs_of(0.01, 2), extra_metrics=[acc(0.80)])])
    assert not result.passed
    same = gate([record(runs_of(0.01, 1), extra_metrics=[acc(0.98)])],
                [record(runs_of(0.01, 2), extra_metrics=[acc(0.98)])])
    assert same.passed and verdicts(same, "eval_accuracy") == {Verdict.passed}


def test_failed_conformance_check_fails_the_gate_unless_it_failed_before() -> None:
    bad = Check(name="x.equal", passed=False, detail="planted")
    result = gate([record(runs_of(0.01, 1))], [record(runs_of(0.01, 2), checks=[bad], status=Status.failed)])
    assert not result.passed and "check x.equal failed" in result.failures[0]
    known = gate([record(runs_of(0.01, 1), checks=[bad], status=Status.failed)],
                 [record(runs_of(0.01, 2), checks=[bad], status=Status.failed)])
    assert known.passed and "x.equal" in known.known_failures[0]


def test_an_inconclusive_check_makes_the_gate_inconclusive_not_failed() -> None:
    from suite import cli

    unsettled = Check(name="x.agrees", passed=False, inconclusive=True, detail="the CI straddles +-10%")
    result = gate([record(runs_of(0.01, 1))], [record(runs_of(0.01, 2), checks=[unsettled])])
    assert result.passed and "x.agrees inconclusive" in result.inconclusive_checks[0]
    assert cli.report_gate(result) == cli.EXIT_INCONCLUSIVE
    with pytest.raises(ValueError, match="both passed and inconclusive"):
        Check(name="x.agrees", passed=True, inconclusive=True)


def test_cross_machine_comparison_is_refused_unless_asked() -> None:
    base, cur = [record(runs_of(0.01, 1), machine="a")], [record(runs_of(0.01, 2), machine="b")]
    with pytest.raises(SuiteError, match="different machines"):
        gate(base, cur)
    assert gate(base, cur, allow_cross_machine=True).passed


def test_paired_rounds_cancel_drift_that_welch_cannot() -> None:
    drift = np.linspace(0.0, 0.3, 6)  # the host slows down steadily over the session
    base = np.log(0.010) + drift
    head = np.log(0.0103) + drift  # a 3% regression, paired round by round
    paired = measure_effect(np.exp(base), np.exp(head), True, paired=True)
    welch = measure_effect(np.exp(base), np.exp(head), True)
    assert paired.upper() < welch.upper() and paired.p_worse() < 0.01 < welch.p_worse()


def test_false_alarms_are_controlled_across_many_metrics() -> None:
    """40 A/A metrics with 3 runs each: the false-discovery control keeps 'regressed' away."""
    rng = np.random.default_rng(7)
    alarms = 0
    for _ in range(40):
        base = record(runs_of(0.01, int(rng.integers(1e6)), runs=3, between=0.02))
        cur = record(runs_of(0.01, int(rng.integers(1e6)), runs=3, between=0.02))
        alarms += not gate([base], [cur]).passed
    assert alarms <= 1


def test_instruction_counts_from_oversubscribed_runs_still_count() -> None:
    def counted(values: list[float], flags: list[bool]):  # type: ignore[no-untyped-def]
        runs = [stats.scalar("instructions_per_call", "instructions", False, v) for v in values]
        metric = stats.combine_runs([m.model_copy(update={"clock": "callgrind"}) for m in runs])
        return record(runs_of(0.01, 1, runs=len(values)), extra_metrics=[metric], oversubscribed=flags)

    base = counted([7.9e6, 7.91e6, 7.905e6], [True] * 3)
    cur = counted([8.12e6, 8.121e6, 8.119e6], [True] * 3)
    rules = [RegressionCheck.parse("instructions_per_call:+0.5%")]
    (row,) = [c for c in gate([base], [cur], rules).comparisons if c.metric == "instructions_per_call"]
    assert row.verdict is Verdict.regressed


def test_a_scenario_broken_on_both_sides_is_listed_not_passed_silently() -> None:
    result = gate([record(runs_of(0.01, 1), status=Status.error)], [record(runs_of(0.01, 2), status=Status.error)])
    assert any("still errors" in line for line in result.known_failures)


def test_the_verdicts_file_of_an_identical_pair_is_strict_json() -> None:
    """Identical values have no effect to measure: their threshold and CI are NaN, which
    `mlsuite ab` writes as null, so jq and other strict parsers can read the file; the
    report reads them back as NaN."""
    from suite import ab
    from suite.compare import Comparison

    same = record(runs_of(0.010, seed=1))
    result = gate([same], [same])
    assert any(math.isnan(c.threshold) for c in result.comparisons)  # the premise
    text = json.dumps(ab.verdict_summary(result, [same], [same], rounds=1), default=str, allow_nan=False)
    rows = json.loads(text)["comparisons"]
    assert rows[0]["threshold"] is None and rows[0]["change_ci"] == [None, None] and rows[0]["verdict"] == "pass"
    back = Comparison.from_json(rows[0])
    assert math.isnan(back.threshold) and math.isnan(back.change_ci[0]) and back.verdict is Verdict.passed
    assert back.ratio == result.comparisons[0].ratio and back.p_value is None
