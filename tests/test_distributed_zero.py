"""ZeRO (DeepSpeed stages 0-3, + CPU offload), ZeroRedundancyOptimizer and FSDP2 on 2 gloo
ranks: parameters after N AdamW steps equal single-process AdamW on the same global batch,
and the bytes each rank holds shrink as claimed; each check failing on a planted bug.
One job hosts every strategy, so the module pays for one launch (offload has its own,
because its first use JIT-compiles DeepSpeedCPUAdam)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from reference.distributed import conformance, deepspeed_zero, launch, strategies  # noqa: E402
from reference.distributed.rankjob import JobFailed, JobSpec, RankJob  # noqa: E402
from reference.training.models import build  # noqa: E402

WORLD, STEPS, SEED = 2, 5, 0
SHARDING = ("torch.zero1", "torch.fsdp2", "deepspeed.stage0", "deepspeed.stage1", "deepspeed.stage2",
            "deepspeed.stage3")
CONFIG = deepspeed_zero.load_config()
BATCHING = deepspeed_zero.batching_of(CONFIG, WORLD)


def make_model() -> torch.nn.Module:
    return build("mlp", "tiny", SEED)


def failed(found: list) -> set[str]:
    return {check.name for check in found if not check.passed}


def run_strategies(names: tuple[str, ...], tmp_path) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Each strategy: N fresh AdamW steps (parameters and loss curve) and, after one timed
    step, the bytes every rank holds. Also records how the job answers a bad request."""
    found: dict[str, dict] = {}
    with RankJob(JobSpec(strategies=names, size="tiny", seed=SEED), WORLD, timeout_s=300) as job:
        job.request("build")
        for name in names:
            reply = job.request("train", strategy=name, steps=STEPS, out=str(tmp_path / f"{name}.pt"))
            job.request("step", strategy=name, count=1)
            found[name] = {**torch.load(reply["path"], weights_only=True),
                           "memory": job.request("memory", strategy=name)["ranks"]}
        with pytest.raises(JobFailed) as bad:
            job.request("step", strategy="deepspeed.stage9", count=1)
        found["bad_request"] = {"error": str(bad.value)}
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return run_strategies(("ddp", *SHARDING), tmp_path_factory.mktemp("zero"))


@pytest.fixture(scope="module")
def reference() -> dict:
    return conformance.single_process_training(make_model, CONFIG, BATCHING, STEPS, SEED)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["ddp", *SHARDING])
def test_parameters_after_adamw_steps_equal_single_process(runs, reference, name: str) -> None:
    found = conformance.equivalence_checks(name, runs[name], reference, STEPS, WORLD)
    assert not failed(found), found


@pytest.mark.distributed
@pytest.mark.parametrize("name", SHARDING)
def test_sharded_bytes_shrink_with_the_world_size(runs, name: str) -> None:
    shards = strategies.sharded_state(name)
    found = conformance.memory_checks(name, shards, runs[name]["memory"], runs["ddp"]["memory"])
    assert len(found) == len(shards) and not failed(found), found
    for kind in {"parameters", "optimizer_state"} - shards:  # what is not sharded is whole on every rank
        assert all(rank[kind] >= runs["ddp"]["memory"][0][kind] for rank in runs[name]["memory"])


@pytest.mark.distributed
def test_a_bad_request_fails_with_the_rank_traceback(runs) -> None:
    assert "deepspeed.stage9" in runs["bad_request"]["error"] and "is not in this job" in runs["bad_request"]["error"]


@pytest.mark.breaks("<strategy>.parameters_match_single_process")
def test_equivalence_check_fails_for_adam_with_coupled_weight_decay(reference) -> None:
    """Planted bug: torch.optim.Adam adds weight decay to the gradient (L2), AdamW decays
    the weights; the ds_config asks for AdamW."""
    settings = strategies.adamw_settings(CONFIG)
    adam = conformance.single_process_training(make_model, CONFIG, BATCHING, STEPS, SEED,
                                               optimizer=lambda params: torch.optim.Adam(params, **settings))
    assert "adam.parameters_match_single_process" in failed(
        conformance.equivalence_checks("adam", adam, reference, STEPS, WORLD))


@pytest.mark.breaks("<strategy>.parameters_match_single_process", "<strategy>.loss_curve_matches_single_process")
def test_equivalence_check_fails_for_rank_local_training(reference) -> None:
    """Planted bug: a rank that steps on its own slice of the batch (no gradient averaging)."""
    local = conformance.single_process_training(make_model, CONFIG, deepspeed_zero.batching_of(CONFIG, 1),
                                                STEPS, SEED)  # rank 0's half of every global batch
    assert failed(conformance.equivalence_checks("local", local, reference, STEPS, WORLD)) == {
        "local.parameters_match_single_process", "local.loss_curve_matches_single_process"}


@pytest.mark.distributed
@pytest.mark.breaks("<strategy>.<state>_bytes_shrink")
def test_memory_check_fails_for_a_strategy_that_replicates(runs) -> None:
    """Planted bug: optimizer state kept whole on every rank (DDP's bytes) by a strategy
    that claims ZeRO-3 sharding."""
    assert failed(conformance.memory_checks("replicated", {"parameters", "optimizer_state"},
                                            runs["ddp"]["memory"], runs["ddp"]["memory"])) == {
        "replicated.parameters_bytes_shrink", "replicated.optimizer_state_bytes_shrink"}


@pytest.mark.distributed
@pytest.mark.slow
def test_zero_offload_matches_single_process_and_shards_optimizer_state(tmp_path, reference) -> None:
    """Stage 2 with the optimizer on CPU (DeepSpeedCPUAdam, JIT-compiled on first use)."""
    found = run_strategies(("ddp", "deepspeed.stage2_offload"), tmp_path)
    offload = found["deepspeed.stage2_offload"]
    checks = [*conformance.equivalence_checks("offload", offload, reference, STEPS, WORLD),
              *conformance.memory_checks("offload", strategies.sharded_state("deepspeed.stage2_offload"),
                                         offload["memory"], found["ddp"]["memory"])]
    assert not failed(checks), checks


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_entry_point_under_the_deepspeed_launcher(tmp_path, reference) -> None:
    """The ds_config-driven script, ZeRO-3 under the deepspeed launcher (which passes
    --local_rank and exports the rendezvous variables), equal to single-process AdamW.
    (torchrun launching DeepSpeed is what the shared job above does.)"""
    args = ["--steps", str(STEPS), "--model-size", "tiny", "--seed", str(SEED), "--stage", "stage3",
            "--deepspeed_config", str(deepspeed_zero.DS_CONFIG), "--out-dir", str(tmp_path)]
    launch.run_command(launch.deepspeed_command(deepspeed_zero.__file__, args, WORLD), 300,
                       env=launch.deepspeed_environment(WORLD, "cpu"))
    result = torch.load(tmp_path / "parameters.pt", weights_only=True)
    assert result["world_size"] == WORLD
    found = conformance.equivalence_checks("deepspeed_launcher", result, reference, STEPS, WORLD)
    assert not failed(found), found


def test_ds_config_is_validated_and_resolved_per_stage(tmp_path) -> None:
    resolved = deepspeed_zero.for_stage(CONFIG, "stage2_offload", world_size=4)
    assert resolved["zero_optimization"] == {**CONFIG["zero_optimization"], "stage": 2,
                                             "offload_optimizer": {"device": "cpu", "pin_memory": False}}
    assert "torch_adam" not in resolved["optimizer"]["params"]  # offload means DeepSpeedCPUAdam
    assert resolved["train_batch_size"] == CONFIG["train_micro_batch_size_per_gpu"] * CONFIG[
        "gradient_accumulation_steps"] * 4
    with pytest.raises(ValueError, match="unknown ZeRO variant"):
        deepspeed_zero.for_stage(CONFIG, "stage4", world_size=2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"optimizer": {"type": "SGD"}, "zero_optimization": {}, '
                   '"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}')
    with pytest.raises(ValueError, match="must be AdamW"):
        deepspeed_zero.load_config(bad)
    with pytest.raises(ValueError, match="unknown strategy"):
        strategies.sharded_state("megatron")
