"""Validation tables and figures from result records (written, read back, rendered)."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from reference.monitoring import plots, validation  # noqa: E402
from reference.monitoring.scenarios import rate_metric  # noqa: E402
from suite.schema import Git, Record, Status, append_record  # noqa: E402
from tests.factories import environment  # noqa: E402


def record(scenario: str, params: dict, metrics: list, provenance: dict | None = None) -> Record:
    return Record(run_id="run", time_utc="2026-11-26T00:00:00+00:00", suite_version="0.1.0", profile="quick",
                  git=Git(commit="abc", dirty=False), env=environment(), scenario=scenario, params=params,
                  config_hash=f"{scenario}{sorted(params.items())}", source_hash="s" * 16, status=Status.ok,
                  duration_s=1.0, metrics=metrics, provenance=provenance or {})


def test_tables_and_figures_from_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = tmp_path / "results.jsonl"
    for features in (1, 20):
        null = validation.null_false_alarms(features, 40, 30, seed=0)
        metrics = [rate_metric(f"numeric.{name}", null.any_alarm[method], False)
                   for name, method in (("false_alarm_rate_uncorrected", "none"), ("fwer_bonferroni", "bonferroni"),
                                        ("fdr_bh", "bh"))]
        append_record(results, record("monitoring.drift.fpr", {"features": features}, metrics))
    points = validation.power("wine", [0.0, 1.0], [20, 40], 20, seed=0)
    append_record(results, record("monitoring.drift.power", {"dataset": "wine"},
                                  [rate_metric(f"power.window_{p.window}.shift_{p.shift:g}", p.detected, True)
                                   for p in points], {"shift": "sub-population"}))
    written = plots.main([str(results), "--out", str(tmp_path / "out")])
    assert [p.name for p in written] == ["validation.md", "false_alarms.png", "power_wine.png"]
    assert all(p.stat().st_size > 1000 for p in written[1:])
    table = written[0].read_text()
    assert "## False alarms, numeric features" in table and "## Detection rate, wine" in table
    assert "| 20 | " in table and "| 40 | " in table and "shift 1" in table
