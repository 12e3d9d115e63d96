"""The multi-node path: two launcher invocations on 127.0.0.1 acting as two nodes of one
job (--nnodes 2 --node-rank 0/1 --rdzv-endpoint), training like one 2-process DDP job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from reference.distributed import conformance, launch  # noqa: E402
from reference.distributed.ddp import TrainConfig  # noqa: E402

CONFIG = TrainConfig(size="tiny", dataset_size=96, micro_batch=8, accumulation=2, epochs=2)
TIMEOUT_S = 180


def node_command(node_rank: int, endpoint: str, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "reference.distributed.launch", "--nnodes", "2", "--node-rank", str(node_rank),
            "--rdzv-endpoint", endpoint, "--nproc-per-node", "1", "--timeout", str(TIMEOUT_S),
            "-m", "reference.distributed.ddp", "--",
            "--dataset-size", str(CONFIG.dataset_size), "--micro-batch", str(CONFIG.micro_batch),
            "--accumulation", str(CONFIG.accumulation), "--epochs", str(CONFIG.epochs), "--out-dir", str(out_dir)]


@pytest.mark.distributed
def test_two_launcher_invocations_form_one_job(tmp_path: Path) -> None:
    endpoint = f"{launch.LOOPBACK}:{launch.free_port()}"
    nodes = [subprocess.Popen(node_command(rank, endpoint, tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT_S)[0] for node in nodes]
    finally:
        for node in nodes:
            launch.kill_group(node)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]  # static rendezvous: node 0 hosts global rank 0
    assert {r["world_size"] for r in ranks} == {2}
    found = conformance.ddp_checks(ranks, conformance.ddp_single_process_reference(CONFIG, 2))
    assert all(check.passed for check in found), found


def test_launcher_rejects_an_inconsistent_node_layout() -> None:
    with pytest.raises(ValueError, match="outside 0..1"):
        launch.Nodes(nnodes=2, node_rank=2, rdzv_endpoint="127.0.0.1:1")
    with pytest.raises(ValueError, match="needs --rdzv-endpoint"):
        launch.Nodes(nnodes=2, node_rank=1)
    with pytest.raises(ValueError, match="rendezvous backend"):
        launch.Nodes(rdzv_backend="etcd")


def test_torchrun_command_carries_the_node_layout() -> None:
    command = launch.torchrun_command(["-m", "pkg.entry", "--x", "1"], 4,
                                      launch.Nodes(nnodes=3, node_rank=2, rdzv_endpoint="10.0.0.1:29400"))
    assert {"--nnodes=3", "--node-rank=2", "--nproc-per-node=4", "--rdzv-endpoint=10.0.0.1:29400",
            "--rdzv-backend=static"} <= set(command)
    assert command[-4:] == ["-m", "pkg.entry", "--x", "1"]


def test_a_failed_launch_says_what_its_ranks_printed_last() -> None:
    """A CI log or failed record shows why a launch failed, not only its exit status."""
    script = "import sys; print('\\n'.join(f'line {i}' for i in range(40))); print('rank 1 aborted'); sys.exit(3)"
    with pytest.raises(launch.LaunchFailed) as failed:
        launch.run_command([sys.executable, "-c", script], 60)
    message = str(failed.value)
    assert failed.value.returncode == 3 and "rank 1 aborted" in message and "line 39" in message
    assert "line 5\n" not in message  # the tail, not the whole output
