"""Elastic torchrun on loopback: two node agents with c10d rendezvous, the second node
SIGKILLed mid-training, the survivor restarts from rank 0's checkpoint at world size 1 and
ends with the parameters of an uninterrupted run; a checkpoint without the optimizer state
is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from reference.distributed import conformance, elastic, elastic_job  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 30


def config(tmp_path: Path, **changes) -> elastic.ElasticConfig:  # type: ignore[no-untyped-def]
    return elastic.ElasticConfig(steps=STEPS, step_sleep_s=0.2, checkpoint_dir=str(tmp_path / "ckpt"), **changes)


def uninterrupted() -> dict:
    return elastic.train(elastic.ElasticConfig(steps=STEPS))


def by_suffix(found: list) -> dict:
    return {c.name.rsplit(".", 1)[-1]: c for c in found}


@pytest.mark.slow
@pytest.mark.distributed
def test_scenario_kills_a_node_and_the_job_resumes_to_the_same_parameters() -> None:
    from tests.test_tuning_scenarios import run

    metrics, found, provenance = run("distributed.elastic")
    assert found and all(c.passed for c in found), found
    values = {m.name: m.value for m in metrics}
    assert 0 < values["restart_s"] < 120 and values["final_parameter_max_abs_diff"] < 1e-5
    assert [s["world_size"] for s in provenance["starts"]] == [2, 1]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.breaks("distributed.elastic.parameters_match_uninterrupted")
def test_a_checkpoint_without_optimizer_state_is_caught(tmp_path: Path) -> None:
    """Planted bug: rank 0 saves the model but not AdamW's moments, so the resumed run
    restarts the optimizer from zero."""
    run = elastic_job.run_elastic(config(tmp_path, save_optimizer=False), tmp_path, kill_after_step=10,
                                  cwd=REPO_ROOT)
    found = by_suffix(conformance.elastic_checks(run, uninterrupted(), STEPS, 2))
    assert found["node_lost_mid_training"].passed and found["resumed_from_checkpoint"].passed
    assert not found["parameters_match_uninterrupted"].passed


def crafted(starts: list[tuple[int, int, int]], steps_done: list[tuple[int, int]], returncodes: list[int | None],
            killed_after: int = 10) -> elastic_job.ElasticRun:
    """An ElasticRun from (restart, world, from_step) starts and (step, start index) steps."""
    events = [{"event": "start", "time": 100.0 * i, "restart": r, "world_size": w, "from_step": f}
              for i, (r, w, f) in enumerate(starts)]
    events += [{"event": "step", "time": 100.0 * start + 1 + step, "step": step, "world_size": starts[start][1]}
               for step, start in steps_done]
    params = {"w": torch.ones(2)}
    return elastic_job.ElasticRun(events=sorted(events, key=lambda e: e["time"]), returncodes=returncodes,
                                  parameters=params, killed_at=50.0, steps_before_kill=killed_after, logs=[])


@pytest.mark.breaks("distributed.elastic.resumed_from_checkpoint")
def test_a_restart_from_scratch_is_caught() -> None:
    """Planted bug: the restarted workers ignore the checkpoint and start again at step 0."""
    run = crafted([(0, 2, 0), (1, 1, 0)], [(s, 0) for s in range(10)] + [(s, 1) for s in range(STEPS)], [0, None])
    found = by_suffix(conformance.elastic_checks(run, {"w": torch.ones(2)}, STEPS, 2))
    assert not found["resumed_from_checkpoint"].passed and found["parameters_match_uninterrupted"].passed


@pytest.mark.breaks("distributed.elastic.node_lost_mid_training", "distributed.elastic.survivors_finished")
def test_a_job_that_never_restarted_or_whose_survivor_failed_is_caught() -> None:
    """Planted bugs: the kill missed (no restart at a smaller world), and the survivor exited 1."""
    run = crafted([(0, 2, 0)], [(s, 0) for s in range(STEPS)], [1, None])
    found = by_suffix(conformance.elastic_checks(run, {"w": torch.ones(2)}, STEPS, 2))
    assert not found["node_lost_mid_training"].passed and not found["survivors_finished"].passed


def test_resumed_training_equals_uninterrupted_training_across_world_sizes(tmp_path: Path) -> None:
    """In one process: 10 steps, a checkpoint, the rest resumed, equals 30 straight steps."""
    first = dataclasses.replace(config(tmp_path), steps=10, step_sleep_s=0.0)
    elastic.train(first)
    resumed = elastic.train(dataclasses.replace(first, steps=STEPS))
    assert conformance.max_abs_difference(resumed, uninterrupted()) == 0.0
    assert [e["from_step"] for e in elastic.read_events(tmp_path / "ckpt") if e["event"] == "start"] == [0, 10]


def test_agent_command_is_elastic_with_c10d_on_loopback() -> None:
    command = elastic_job.agent_command("127.0.0.1:29400", "job", hosts_store=False)
    assert {"--nnodes=1:2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:29400", "--local-addr=127.0.0.1",
            "--max-restarts=3"} <= set(command)
    assert any(part.startswith("--rdzv-conf=is_host=0,") for part in command)
    with pytest.raises(ValueError, match="not divisible"):
        elastic.global_batching(elastic.ElasticConfig(global_batch=33), 2)
