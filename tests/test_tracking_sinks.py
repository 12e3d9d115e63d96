"""`mlsuite run --track TOOL` sinks: a result record logged to MLflow, TensorBoard or W&B
reads back identical (params, metrics with CIs, verdicts, environment, the record itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

from reference.tracking import conformance, sinks, trackers  # noqa: E402
from suite import checks, stats  # noqa: E402
from suite.schema import Record, load_records  # noqa: E402
from tests.factories import record, timings  # noqa: E402

FROZEN = Path(__file__).resolve().parent / "data" / "results-v2.jsonl"


def sample_record() -> Record:
    """A record with everything a sink must carry: CIs, claimed percentiles, a failed check
    with an infinite observation, a metric name MLflow would refuse."""
    latency = stats.summarize("latency", "s", False, timings(0.01, seed=1, n=700))
    odd = stats.scalar("tpe.regret@10", "regret", False, 0.25)
    found = [checks.at_most("fp32.close", float("inf"), 1e-5, "golden"), checks.holds("shape", True, "eager")]
    made = record(timings(0.02, seed=0), checks=found, extra_metrics=[latency, odd])
    return made.model_copy(update={"provenance": {"precision": "fp32", "traceback": "not logged"}})


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {tool: tmp_path_factory.mktemp(tool) for tool in sinks.SINKS}


@pytest.mark.parametrize("tool", list(sinks.SINKS))
def test_a_record_reads_back_identical(roots: dict[str, Path], tool: str) -> None:
    rec = sample_record()
    locator = sinks.log_record(tool, rec, root=roots[tool])
    tracker_class = trackers.tracker_class(tool)
    read = tracker_class.read(locator)
    check = conformance.round_trip("sink", tracker_class, sinks.record_run(rec), read)
    assert check.passed, check.detail
    assert read.artifacts[sinks.RECORD_ARTIFACT] == rec.model_dump_json(indent=2).encode()
    assert read.metrics["latency.p99"] == [(0, rec.metric("latency").percentiles[-1].value)]
    assert read.metrics["check.fp32.close"] == [(0, 0.0)] and "check.fp32.close.observed" not in read.metrics
    assert "tpe.regret_10" in read.metrics and "provenance.traceback" not in read.params


def test_every_frozen_record_converts() -> None:
    for rec in load_records(FROZEN):
        run = sinks.record_run(rec)
        assert run.params["scenario"] == rec.scenario and run.params["config_hash"] == rec.config_hash
        assert all(key == sinks.metric_key(key) for key in run.metrics)
        assert json.loads(run.artifacts["record.json"])["run_id"] == rec.run_id


def test_long_and_structured_params_are_flattened_and_bounded() -> None:
    rec = sample_record().model_copy(update={"reason": "x" * 10_000, "params": {"shape": [1, 2], "ok": True}})
    params = sinks.record_params(rec)
    assert len(params["reason"]) == sinks.MAX_PARAM_CHARS
    assert params["param.shape"] == "[1, 2]" and params["param.ok"] is True


def test_unknown_tool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tracking tool 'neptune'"):
        sinks.log_record("neptune", sample_record(), root=tmp_path)


def test_runner_records_flow_into_a_tracker_through_on_record(tmp_path: Path) -> None:
    """What `mlsuite run --track tensorboard` wires up: every record the runner writes is
    logged as it arrives, and reads back identical."""
    from suite import registry
    from suite.profiles import PROFILES
    from suite.runner import run

    logged: list[tuple[Record, dict[str, str]]] = []
    budget = PROFILES["quick"].model_copy(update={"warmup_s": 0.0, "max_time_s": 0.05, "min_samples": 5})
    held = registry.reset()
    try:
        path = run("planted.ok", "quick", budget, tmp_path / "results", packages=("tests.planted",),
                   on_record=lambda rec: logged.append((rec, sinks.log_record("tensorboard", rec, root=tmp_path))))
    finally:
        registry.restore(held)
    assert [rec for rec, _ in logged] == load_records(path) and len(logged) == 2
    tracker_class = trackers.tracker_class("tensorboard")
    for rec, locator in logged:
        check = conformance.round_trip("sink", tracker_class, sinks.record_run(rec), tracker_class.read(locator))
        assert check.passed, check.detail
