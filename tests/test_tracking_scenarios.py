"""The tracking scenarios as the harness runs them: registered with quick profiles, and a
TensorBoard run end to end (overhead metrics with units, every conformance check passing)."""

from __future__ import annotations

import pytest

from suite import registry
from suite.context import RunContext
from suite.profiles import PROFILES

FAST = PROFILES["quick"].model_copy(update={"warmup_s": 0.0, "max_time_s": 0.05, "min_samples": 5})


def test_every_tracking_scenario_is_registered_with_a_quick_profile() -> None:
    registry.discover()
    found = {sid: cls for sid, cls in registry.scenarios().items() if cls.__module__ == "reference.tracking.scenarios"}
    assert "tracking.mlflow" in found  # the id/folder agreement is tests/test_layout_contract.py's
    assert all(cls.param_grid("quick") for cls in found.values())
    assert {p["synchronous"] for p in found["tracking.mlflow"].param_grid("quick")} == {True, False}


def test_tensorboard_scenario_end_to_end() -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("torch")
    registry.discover()
    ctx = RunContext(params={"metrics_per_step": 10}, budget=FAST, profile="quick", seed=0)
    scenario = registry.get("tracking.tensorboard")()
    scenario.setup(ctx)
    metrics = {m.name: m for m in scenario.measure(ctx)}
    assert metrics["log_throughput"].unit == "values/s" and metrics["log_step_time"].n >= 5
    assert metrics["log_cost_in_train_steps"].unit == "ratio" and metrics["store_open"].kind == "cold"
    found = scenario.check(ctx)
    assert len(found) == 6 and all(c.passed for c in found), [c for c in found if not c.passed]
    assert ctx.provenance["interrupted"]["flushed_when_killed"] >= 20
