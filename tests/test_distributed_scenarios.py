"""The distributed scenarios: registered light (no heavy import), requirements by world
size and device, and end to end in this process (setup, measure, check) on a tiny budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

from suite import registry
from suite.context import RunContext
from suite.profiles import Budget
from suite.requirements import Cuda, Package, Processes

IDS = ("distributed.ddp", "distributed.zero.torch", "distributed.fsdp2", "distributed.zero.deepspeed")
TINY = Budget(warmup_calls=1, warmup_s=0.0, min_samples=3, max_samples=6, max_time_s=0.05)


@pytest.fixture(scope="module")
def scenarios() -> dict[str, type[registry.Scenario]]:
    registry.discover()
    return {i: registry.get(i) for i in IDS}


def test_scenarios_module_imports_nothing_heavy() -> None:
    code = ("import sys, reference.distributed.scenarios; "
            "print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_scenario_has_quick_and_gpu_profiles(scenarios) -> None:
    for cls in scenarios.values():
        quick, gpu = cls.param_grid("quick"), cls.param_grid("gpu")
        assert quick and gpu
        assert {p["device"] for p in quick} == {"cpu"} and {p["device"] for p in gpu} == {"cuda"}
    assert {p["stage"] for p in scenarios["distributed.zero.deepspeed"].param_grid("full")} == {
        "stage0", "stage1", "stage2", "stage2_offload", "stage3"}
    assert scenarios["distributed.ddp"].param_grid("quick")[0]["world_sizes"] == [1, 2]  # the scaling table


def test_requirements_ask_for_processes_on_cpu_and_gpus_on_cuda(scenarios) -> None:
    params = {"device": "cpu", "size": "small", "micro_batch": 32, "world_sizes": [1, 2], "stage": "stage3"}
    deepspeed = scenarios["distributed.zero.deepspeed"]()
    assert Processes(2) in deepspeed.requirements(params) and Package("deepspeed") in deepspeed.requirements(params)
    ddp_on_gpu = scenarios["distributed.ddp"]().requirements({**params, "device": "cuda"})
    assert Cuda(devices=2) in ddp_on_gpu and Package("deepspeed") not in ddp_on_gpu


def run_in_process(cls: type[registry.Scenario], params: dict) -> tuple[list, list, dict]:
    scenario = cls()
    ctx = RunContext(params=params, budget=TINY, profile="quick", seed=0)
    try:
        scenario.setup(ctx)
        metrics = scenario.measure(ctx)
        found = scenario.check(ctx)
    finally:
        scenario.teardown()  # type: ignore[attr-defined]
    return metrics, found, ctx.provenance


@pytest.mark.distributed
@pytest.mark.slow
def test_zero_torch_scenario_measures_scaling_overhead_memory_and_checks(scenarios) -> None:
    pytest.importorskip("torch")
    metrics, found, provenance = run_in_process(scenarios["distributed.zero.torch"], {
        "device": "cpu", "size": "tiny", "micro_batch": 8, "world_sizes": [1, 2]})
    by_name = {m.name: m for m in metrics}
    for world in (1, 2):
        for name in ("launch_s", "rendezvous_s", "setup_s", "first_step_s"):
            assert by_name[f"p{world}.{name}"].kind == "cold"
        assert by_name[f"p{world}.step_time"].n >= TINY.min_samples
        assert by_name[f"p{world}.ddp.step_time"].median > 0
        assert by_name[f"p{world}.overhead_vs_ddp"].value > 0
    assert by_name["p2.optimizer_state_bytes"].value < by_name["p1.optimizer_state_bytes"].value
    assert {"weak_scaling_efficiency", "strong_scaling_efficiency", "p2.strong.throughput"} <= by_name.keys()
    assert {c.name for c in found} == {"torch.zero1.parameters_match_single_process",
                                       "torch.zero1.loss_curve_matches_single_process",
                                       "torch.zero1.optimizer_state_bytes_shrink"}
    assert all(c.passed for c in found), found
    assert provenance["backend"] == "gloo" and "strong" in provenance["scaling"]


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_scenario_runs_the_entry_point_checks_inside_its_job(scenarios) -> None:
    pytest.importorskip("torch")
    metrics, found, _ = run_in_process(scenarios["distributed.ddp"], {
        "device": "cpu", "size": "tiny", "micro_batch": 8, "world_sizes": [2]})
    assert "weak_scaling_efficiency" not in {m.name for m in metrics}  # one world size: no scaling claimed
    names = {c.name for c in found}
    assert {"ddp.trainer.gradients_match_single_process", "ddp.trainer.no_sync_one_allreduce_per_step",
            "ddp.trainer.resume_is_exact", "ddp.parameters_match_single_process"} <= names
    assert all(c.passed for c in found), found
