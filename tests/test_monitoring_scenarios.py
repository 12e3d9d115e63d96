"""The monitoring scenarios through the harness: registration, light imports, requirements,
and whole records from the worker with a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from suite import registry
from suite.requirements import Binary, first_unmet
from tests.conftest import REPO_ROOT

TINY_BUDGET = {"warmup_calls": 1, "warmup_s": 0.0, "min_samples": 3, "max_samples": 5, "max_time_s": 0.01,
               "threads": 1, "seed": 0}


def monitoring_scenarios() -> dict[str, type[registry.Scenario]]:
    registry.discover()
    return {k: v for k, v in registry.scenarios().items() if v.__module__ == "reference.monitoring.scenarios"}


def test_every_scenario_is_registered_with_a_quick_profile() -> None:
    found = monitoring_scenarios()
    assert len(found) >= 2, found  # the id/folder agreement is tests/test_layout_contract.py's
    for cls in found.values():
        assert cls.param_grid("quick"), cls.id
    assert {p["features"] for p in found["monitoring.drift"].param_grid("full")} == {500}
    assert {p["rows"] for p in found["monitoring.drift"].param_grid("full")} >= {100_000}
    assert {p["features"] for p in found["monitoring.drift.fpr"].param_grid("quick")} == {1, 10, 100, 500}


def test_scenarios_module_imports_nothing_heavy() -> None:
    code = ("import sys, reference.monitoring.scenarios; "
            "heavy = {'scipy', 'pandas', 'sklearn', 'prometheus_client'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_prometheus_modes_need_their_binaries() -> None:
    cls = monitoring_scenarios()["monitoring.prometheus"]
    assert Binary("promtool") in cls().requirements({"mode": "instrumentation", "requests": 10})
    assert Binary("prometheus") in cls().requirements({"mode": "server", "requests": 10})


def run_worker(tmp_path, scenario_id: str, **params) -> dict:  # type: ignore[no-untyped-def]
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    job.write_text(json.dumps({"scenario": scenario_id, "params": params, "profile": "quick",
                               "budget": TINY_BUDGET, "module": "reference.monitoring.scenarios"}))
    subprocess.run([sys.executable, "-m", "suite.worker", str(job), str(result)], check=True, cwd=REPO_ROOT,
                   capture_output=True, timeout=300)
    return json.loads(result.read_text())


@pytest.mark.slow
def test_drift_record_has_speedup_and_scipy_equal_pvalues(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pandas")
    result = run_worker(tmp_path, "monitoring.drift", features=12, rows=3000, drifted=0.25)
    assert result["status"] == "ok", result["reason"]
    names = {m["name"] for m in result["metrics"]}
    assert {"vectorised_throughput", "scipy_loop_throughput", "speedup_vs_scipy_loop",
            "presorted_reference_throughput", "presorted_speedup_vs_scipy_loop",
            "detector_with_effect_sizes_throughput"} <= names
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["drift.ks_pvalue_equals_scipy"]["passed"] and checks["drift.ks_method_as_scipy"]["passed"]
    assert result["provenance"]["ks_method"] == "exact" and "500 features" in result["provenance"]["speedup_target"]


@pytest.mark.slow
def test_fpr_record_shows_naive_inflation_next_to_corrected_rates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("scipy")
    result = run_worker(tmp_path, "monitoring.drift.fpr", features=10, rows=40, repetitions=100)
    assert result["status"] == "ok", result["reason"]
    metrics = {m["name"]: m for m in result["metrics"]}
    naive, bh = metrics["numeric.false_alarm_rate_uncorrected"], metrics["numeric.fdr_bh"]
    assert naive["value"] > 0.2 > bh["value"] and naive["unit"] == "fraction" and not naive["higher_is_better"]
    assert naive["ci_low"] < naive["value"] < naive["ci_high"] and naive["n"] == 100
    assert all(c["passed"] for c in result["checks"]), result["checks"]
    assert {c["name"] for c in result["checks"]} >= {"drift.fdr_bh_within_alpha.categorical",
                                                     "drift.uncorrected_inflated_above_alpha.numeric"}


@pytest.mark.slow
def test_performance_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("sklearn")
    result = run_worker(tmp_path, "monitoring.performance", predictions=3000)
    assert result["status"] == "ok", result["reason"]
    assert {"overhead_per_prediction", "window_query_step_time"} <= {m["name"] for m in result["metrics"]}
    assert {c["name"] for c in result["checks"] if c["passed"]} >= {"performance.metrics_equal_sklearn",
                                                                     "performance.unlabeled_counts_exact",
                                                                     "performance.running_totals_equal_window"}


@pytest.mark.slow
def test_prometheus_instrumentation_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("prometheus_client")
    cls = monitoring_scenarios()["monitoring.prometheus"]
    params = {"mode": "instrumentation", "requests": 50}
    if (reason := first_unmet(cls().requirements(params))) is not None:
        pytest.skip(reason)
    result = run_worker(tmp_path, "monitoring.prometheus", **params)
    assert result["status"] == "ok", result["reason"]
    names = {m["name"] for m in result["metrics"]}
    assert {"monitoring_overhead_per_prediction", "metrics_overhead_per_prediction", "log_overhead_per_prediction",
            "monitor_overhead_per_prediction", "unmonitored_step_time", "monitored_vs_bare_time"} <= names
    assert all(c["passed"] for c in result["checks"]), result["checks"]


@pytest.mark.parametrize(("scenario_id", "params", "contenders"), [
    ("monitoring.drift", {"features": 4, "rows": 300, "drifted": 0.5},
     {"vectorised_", "presorted_reference_", "scipy_loop_", "detector_with_effect_sizes_"}),
    ("monitoring.prometheus", {"mode": "instrumentation", "requests": 20},
     {"", "unmonitored_", "metrics_", "log_", "monitor_"}),
])
def test_contenders_are_timed_side_by_side(monkeypatch, scenario_id: str, params: dict,  # type: ignore[no-untyped-def]
                                          contenders: set[str]) -> None:
    """One call of the harness's interleaving primitive holds every contender whose ratio
    the record reports (not one sequential timing loop per contender)."""
    pytest.importorskip("pandas")
    pytest.importorskip("prometheus_client")
    from suite import timing
    from suite.context import RunContext
    from suite.profiles import Budget

    calls: list[set[str]] = []
    real = timing.time_interleaved

    def recording(given, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(set(given))
        return real(given, *args, **kwargs)

    monkeypatch.setattr(timing, "time_interleaved", recording)
    ctx = RunContext(params=params, budget=Budget(**TINY_BUDGET), profile="quick", seed=0)
    scenario = monitoring_scenarios()[scenario_id]()
    scenario.setup(ctx)
    names = {m.name for m in scenario.measure(ctx)}
    assert calls == [contenders]
    assert all({f"{prefix}step_time", f"{prefix}overhead_per_prediction"} & names for prefix in contenders), names
