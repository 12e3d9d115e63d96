"""The serving scenarios as the runner drives them (setup, measure, check, teardown) with
a tiny budget: the table's metrics are there with units, the checks pass, no server is
left running, and a server that cannot start becomes `skipped` with its own error."""

from __future__ import annotations

from typing import Any

import pytest

from suite import registry
from suite.context import RunContext
from suite.profiles import Budget

pytestmark = pytest.mark.serving
TINY = Budget(warmup_calls=1, warmup_s=0.0, min_samples=5, max_samples=200, max_time_s=0.3)
IDS = {"serving.fastapi", "serving.torchserve", "serving.triton", "serving.side_by_side", "serving.inprocess",
       "serving.loadgen", "serving.warmup"}


@pytest.fixture(scope="module", autouse=True)
def discovered() -> None:
    registry.discover()


def test_every_serving_scenario_is_registered_with_a_quick_profile() -> None:
    found = {sid for sid in registry.scenarios() if sid.startswith("serving.")}
    assert found == IDS
    for sid in IDS:
        assert registry.get(sid).param_grid("quick"), sid
    quick = registry.get("serving.fastapi").param_grid("quick")
    assert quick is not None and {p["batching"] for p in quick} == {False, True}
    assert all(p["concurrency"] == [1, 4, 16, 64] for p in quick)


def run(scenario_id: str, **params: Any) -> tuple[registry.Scenario, RunContext, list[Any], list[Any]]:
    cls = registry.get(scenario_id)
    grid = {**cls.grid, **cls.profiles["quick"]}
    resolved = {name: values[0] for name, values in grid.items()} | params
    ctx = RunContext(params=resolved, budget=TINY, profile="quick", seed=0)
    instance = cls()
    instance.setup(ctx)
    metrics = instance.measure(ctx)
    checks = instance.check(ctx)
    return instance, ctx, metrics, checks


@pytest.mark.slow
def test_inprocess_limit_runs_and_matches_eager() -> None:
    pytest.importorskip("torch")
    _, _, metrics, checks = run("serving.inprocess", batch=16)
    names = {m.name: m for m in metrics}
    assert names["throughput"].unit == "samples/s" and names["throughput"].value > 0
    assert [c.name for c in checks] == ["inprocess.outputs_match_eager"] and checks[0].passed


@pytest.mark.slow
@pytest.mark.breaks("inprocess.outputs_match_eager")
def test_inprocess_check_catches_a_wrong_model_file() -> None:
    pytest.importorskip("torch")
    from reference.serving import models

    cls = registry.get("serving.inprocess")
    params = {name: values[0] for name, values in {**cls.grid, **cls.profiles["quick"]}.items()}
    ctx = RunContext(params=params, budget=TINY, profile="quick", seed=0)
    instance = cls()
    instance.setup(ctx)
    honest = instance.predictor
    instance.predictor = models.Predictor(lambda rows: honest(rows) * 1.001, honest.in_features, honest.fmt)
    [check] = instance.check(ctx)
    assert not check.passed and check.observed is not None and check.observed > 1e-5


@pytest.mark.slow
def test_fastapi_scenario_records_the_table_row_and_stops_its_server() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("fastapi")
    instance, ctx, metrics, checks = run("serving.fastapi", concurrency=[1, 8])
    names = {m.name: m for m in metrics}
    for name in ("cold_start_to_ready", "first_request", "raw_throughput", "served_throughput", "c1_throughput",
                 "c8_latency", "c8_loadgen_capacity", "c8_stable", "goodput", "serving_efficiency"):
        assert name in names, name
    assert names["cold_start_to_ready"].kind == "cold"
    assert names["c8_latency"].unit == "s" and names["goodput"].unit == "req/s"
    efficiency = names["serving_efficiency"]
    assert efficiency.ci_low <= efficiency.value <= efficiency.ci_high and efficiency.n >= TINY.min_samples
    search = ctx.provenance["goodput_search"]
    assert search["probes"] >= 1 and all(p["offered"] > 0 for p in search["curve"])
    assert names["goodput"].value in [0.0, *(p["offered"] for p in search["curve"] if p["meets_slo"])]
    assert ctx.provenance["load_average_before"] and ctx.provenance["served_latency_hdr_us"]
    assert {c.name for c in checks} == {"serving.outputs_match_eager", "serving.batching_no_crosstalk",
                                        "serving.batch_equals_individual", "serving.bad_input_4xx",
                                        "serving.metrics_match_client"}
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert instance.deployment is None  # teardown ran inside check
    assert ctx.provenance["server"].startswith("uvicorn") and len(ctx.provenance["load_points"]) == 2


def test_a_server_that_cannot_start_is_skipped_with_its_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("tritonclient")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("MLSUITE_TRITON_VENV", str(blocker / "triton-venv"))
    cls = registry.get("serving.triton")
    params = {name: values[0] for name, values in {**cls.grid, **cls.profiles["quick"]}.items()}
    with pytest.raises(registry.Skip, match="triton did not start: .*(Not a directory|File exists)"):
        cls().setup(RunContext(params=params, budget=TINY, profile="quick", seed=0))


@pytest.mark.slow
def test_loadgen_scenario_interleaves_rounds_with_wrk_and_stops_at_a_settled_look() -> None:
    """Up to two looks of 3 rounds a side: it stops after the first only if that settled
    every agreement check, and its CIs are widened for two looks (97.5%)."""
    import shutil

    pytest.importorskip("fastapi")
    if shutil.which("wrk") is None:
        pytest.skip("needs wrk (apt-get install wrk)")
    _, ctx, metrics, checks = run("serving.loadgen", concurrency=4, rounds=3, looks=2)
    names = {m.name: m for m in metrics}
    ratio = names["ours_throughput_over_wrk"]
    assert ratio.ci_low <= ratio.value <= ratio.ci_high and ratio.n in (3, 6)
    assert len(ctx.provenance["external"]) == ctx.provenance["rounds_per_side"] == ratio.n
    assert len(names["ours_throughput"].samples) == ratio.n and ctx.provenance["confidence"] == 0.975
    assert {c.name for c in checks} == {"loadgen.throughput_agrees_with_wrk", "loadgen.p50_agrees_with_wrk",
                                        "loadgen.not_the_bottleneck"}
    agreement = [c for c in checks if c.name != "loadgen.not_the_bottleneck"]
    assert ratio.n == 6 or not any(c.inconclusive for c in agreement)  # an unsettled first look goes on
    assert all("97.5% CI" in c.detail for c in agreement)
