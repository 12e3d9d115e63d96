"""The DDP entry point with 2 ranks on gloo: equal to single-process training on the
concatenated batch, one all-reduce per step under no_sync, exact resume, clean teardown;
and each check failing on a planted bug. Runs launched once per module and shared."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
from torch.multiprocessing import ProcessRaisedException  # noqa: E402
from torch.utils.data import DistributedSampler  # noqa: E402

from reference.distributed import checkpoint, conformance, ddp, launch  # noqa: E402
from reference.distributed.runtime import RankInfo, process_group, validate  # noqa: E402

WORLD = 2
BASE = ddp.TrainConfig(size="tiny", dataset_size=200, micro_batch=8, accumulation=2, epochs=3)
LAUNCH_TIMEOUT_S = 180


def failed(found: list) -> set[str]:
    return {check.name for check in found if not check.passed}


def load_ranks(out_dir: str | Path, world: int = WORLD) -> list[dict]:
    return [torch.load(Path(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def flags(config: ddp.TrainConfig) -> list[str]:
    """The config as the entry point's command line."""
    found = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            found.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            found += [flag, str(value)]
    return found


def torchrun_ddp(config: ddp.TrainConfig) -> list[dict]:
    command = launch.torchrun_command(["-m", "reference.distributed.ddp", *flags(config)], WORLD)
    launch.run_command(command, LAUNCH_TIMEOUT_S)
    return load_ranks(config.out_dir or "")


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Launched by torchrun: 3 epochs with checkpoints, then a run resumed after epoch 1."""
    tmp = tmp_path_factory.mktemp("ddp")
    full = dataclasses.replace(BASE, checkpoint_dir=str(tmp / "ckpt"), out_dir=str(tmp / "full"))
    resumed = dataclasses.replace(BASE, resume_from=str(checkpoint.path_for(tmp / "ckpt", 1)),
                                  out_dir=str(tmp / "resumed"))
    return {"full": torchrun_ddp(full), "resumed": torchrun_ddp(resumed),
            "checkpoints": sorted((tmp / "ckpt").iterdir())}


@pytest.fixture(scope="module")
def reference() -> dict:
    return conformance.ddp_single_process_reference(BASE, WORLD)


def train_each(runs: list[tuple[ddp.TrainConfig, object]]) -> None:
    """Several trainings in one launch: (config, comm hook or None for the counting one)."""
    with process_group(runs[0][0].backend, runs[0][0].device) as session:
        for config, hook in runs:
            ddp.write_result(ddp.train(session, config, comm_hook=hook), config.out_dir)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def spawned_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Launched by mp.spawn: the training all-reducing on every micro-step, and a planted
    bug: a comm hook that never all-reduces (torch's noop_hook), so each rank steps on its
    own gradients."""
    from torch.distributed.algorithms.ddp_comm_hooks.debugging_hooks import noop_hook

    tmp = tmp_path_factory.mktemp("spawned")
    every_step = dataclasses.replace(BASE, use_no_sync=False, out_dir=str(tmp / "every_step"))
    not_averaged = dataclasses.replace(BASE, out_dir=str(tmp / "not_averaged"))
    launch.spawn(train_each, WORLD, [(every_step, None), (not_averaged, noop_hook)])
    return {"every_step": load_ranks(tmp / "every_step"), "not_averaged": load_ranks(tmp / "not_averaged")}


# ---------------------------------------------------------------- the reference passes

@pytest.mark.distributed
def test_ddp_equals_single_process_on_the_concatenated_batch(torchrun_runs, reference) -> None:
    found = conformance.ddp_checks(torchrun_runs["full"], reference)
    assert not failed(found), found
    assert torchrun_runs["full"][0]["world_size"] == WORLD
    assert found[0].observed < 1e-5 and found[1].observed == 0.0


@pytest.mark.distributed
def test_no_sync_all_reduces_once_per_step_and_matches_syncing_every_step(torchrun_runs, spawned_runs) -> None:
    with_no_sync, every_step = torchrun_runs["full"][0], spawned_runs["every_step"][0]
    found = conformance.no_sync_checks(with_no_sync, every_step)
    assert not failed(found), found
    assert with_no_sync["micro_steps"] > with_no_sync["optimizer_steps"]  # accumulation happened
    assert every_step["syncs"] == every_step["micro_steps"]


@pytest.mark.distributed
def test_resume_after_epoch_one_is_exact(torchrun_runs) -> None:
    resumed = torchrun_runs["resumed"][0]
    assert resumed["start_epoch"] == 1
    check = conformance.resume_check(torchrun_runs["full"][0]["parameters"], resumed["parameters"], 1)
    assert check.passed, check
    assert [p.name for p in torchrun_runs["checkpoints"]] == ["epoch0001.pt", "epoch0002.pt", "epoch0003.pt"]


# ------------------------------------------------------------------- planted bugs

@pytest.mark.distributed
@pytest.mark.breaks("ddp.trainer.gradients_match_single_process", "ddp.trainer.parameters_identical_across_ranks",
                    "ddp.trainer.loss_curve_matches_single_process")
def test_ddp_checks_fail_when_gradients_are_not_averaged(spawned_runs, reference) -> None:
    assert failed(conformance.ddp_checks(spawned_runs["not_averaged"], reference)) == {
        "ddp.trainer.gradients_match_single_process", "ddp.trainer.parameters_identical_across_ranks",
        "ddp.trainer.loss_curve_matches_single_process"}


@pytest.mark.distributed
@pytest.mark.breaks("ddp.trainer.no_sync_one_allreduce_per_step")
def test_no_sync_count_fails_when_every_micro_step_synchronises(spawned_runs) -> None:
    every_step = spawned_runs["every_step"][0]
    assert failed(conformance.no_sync_checks(every_step, every_step)) == {"ddp.trainer.no_sync_one_allreduce_per_step"}


@pytest.mark.distributed
@pytest.mark.breaks("ddp.trainer.no_sync_one_allreduce_per_step", "ddp.trainer.no_sync_matches_sync_every_step")
def test_no_sync_checks_fail_when_the_boundary_step_never_synchronises(spawned_runs) -> None:
    """Planted bug: accumulation that skips the all-reduce at the boundary too."""
    assert failed(conformance.no_sync_checks(spawned_runs["not_averaged"][0], spawned_runs["every_step"][0])) == {
        "ddp.trainer.no_sync_one_allreduce_per_step", "ddp.trainer.no_sync_matches_sync_every_step"}


@pytest.fixture
def single_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a world of one, for planted bugs that show with a single rank."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": launch.LOOPBACK,
                        "MASTER_PORT": str(launch.free_port())}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("single_rank")
@pytest.mark.breaks("ddp.trainer.loss_curve_matches_single_process")
def test_loss_curve_check_fails_when_set_epoch_is_forgotten(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = dataclasses.replace(BASE, out_dir=str(tmp_path))
    with monkeypatch.context() as patch:  # undo only the planted bug, not the check recorder
        patch.setattr(DistributedSampler, "set_epoch", lambda self, epoch: None)  # planted bug
        ranks = [ddp.run(config)]
    found = conformance.ddp_checks(ranks, conformance.ddp_single_process_reference(config, 1))
    assert failed(found) == {"ddp.trainer.loss_curve_matches_single_process"}  # epoch 0 is still right


def load_model_only(path: Path, model, optimizer, **_) -> int:  # type: ignore[no-untyped-def]
    """Planted bug: resumes the weights but starts AdamW's moments from zero."""
    state = torch.load(path, weights_only=True)
    checkpoint.unwrap(model).load_state_dict(state["model"])
    return int(state["epoch"])


@pytest.mark.usefixtures("single_rank")
@pytest.mark.breaks("ddp.trainer.resume_is_exact")
def test_resume_check_fails_when_optimizer_state_is_not_restored(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    full = ddp.run(dataclasses.replace(BASE, checkpoint_dir=str(tmp_path)))
    monkeypatch.setattr(checkpoint, "load", load_model_only)
    resumed = ddp.run(dataclasses.replace(BASE, resume_from=str(checkpoint.path_for(tmp_path, 1))))
    assert resumed["start_epoch"] == 1
    assert not conformance.resume_check(full["parameters"], resumed["parameters"], 1).passed


# ------------------------------------------------------------- lifecycle and errors

def fail_on_rank_one(marker_dir: str) -> None:
    """Rank 1 raises inside the process group while rank 0 waits in an all-reduce (with a
    collective timeout far longer than the test). Each rank leaves a marker of what it saw."""
    rank = int(os.environ["RANK"])
    try:
        with process_group("gloo", "cpu", timeout_s=300):
            if rank == 1:
                raise RuntimeError("planted failure")
            dist.all_reduce(torch.ones(1))
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised
        Path(marker_dir, f"rank{rank}").write_text(f"{type(exc).__name__}: {exc}\ninitialized={dist.is_initialized()}")
        if rank == 1:
            time.sleep(20)  # stay alive: rank 0 must learn of the failure from the torn-down group
        raise


@pytest.mark.distributed
def test_a_failing_rank_tears_down_its_group_and_its_peer_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(ProcessRaisedException):
        launch.spawn(fail_on_rank_one, WORLD, str(tmp_path))
    assert Path(tmp_path, "rank1").read_text().endswith("initialized=False")
    rank0 = Path(tmp_path, "rank0").read_text()  # rank 0's all-reduce failed instead of hanging
    assert rank0.endswith("initialized=False") and "planted failure" not in rank0


@pytest.mark.usefixtures("single_rank")
def test_process_group_is_destroyed_when_the_body_raises() -> None:
    with pytest.raises(ValueError, match="boom"), process_group("gloo", "cpu"):
        assert dist.is_initialized()
        raise ValueError("boom")
    assert not dist.is_initialized()


def test_bad_backend_device_and_environment_get_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="nccl backend needs device=cuda"):
        validate("nccl", "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        validate("mpi", "cpu")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        RankInfo.from_environment()


def test_checkpoint_is_written_by_rank_zero_only_and_refuses_another_sharding(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "c.pt"
    checkpoint.save(path, model, optimizer, next_epoch=1, sampler_seed=0, world_size=2, is_main=False)
    assert not path.exists()
    checkpoint.save(path, model, optimizer, next_epoch=1, sampler_seed=0, world_size=2, is_main=True)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no partial file left behind
    with pytest.raises(ValueError, match="world size 2"):
        checkpoint.load(path, model, optimizer, device=torch.device("cpu"), sampler_seed=0, world_size=4)


def test_entry_point_flags_round_trip() -> None:
    config = dataclasses.replace(BASE, use_no_sync=False, checkpoint_dir="/tmp/x")
    assert ddp.parse_args(flags(config)) == config
