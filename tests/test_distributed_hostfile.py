"""The deepspeed launcher reading a hostfile (`localhost slots=2`): the ranks it starts train
like single-process AdamW, one rank per slot."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference.distributed import hostfile

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_hostfile_round_trip_and_a_malformed_line(tmp_path: Path) -> None:
    path = hostfile.write_hostfile(tmp_path / "hostfile", {"node1": 8, "node2": 4})
    assert hostfile.read_hostfile(path) == {"node1": 8, "node2": 4}
    path.write_text("# hosts\n\nnode1 slots=8\nnode2 gpus=4\n")
    with pytest.raises(ValueError, match=":4: expected '<host> slots=<n>'"):
        hostfile.read_hostfile(path)
    with pytest.raises(ValueError, match="at least one slot"):
        hostfile.write_hostfile(tmp_path / "h", {"node1": 0})


def test_only_a_localhost_hostfile_skips_the_ssh_check(tmp_path: Path) -> None:
    local = hostfile.deepspeed_hostfile_command("train.py", ["--x"], hostfile.write_hostfile(tmp_path / "a",
                                                                                             {"localhost": 2}))
    remote = hostfile.deepspeed_hostfile_command("train.py", [], hostfile.write_hostfile(tmp_path / "b",
                                                                                         {"node1": 2, "node2": 2}))
    assert "--no_ssh_check" in local and "--no_ssh_check" not in remote
    assert local[-2:] == ["train.py", "--x"] and "--master_addr=127.0.0.1" in local


@pytest.mark.breaks("distributed.deepspeed.hostfile.ranks_from_slots")
def test_a_world_size_that_ignores_the_slots_is_caught() -> None:
    """Planted bug: the launcher started one rank although the hostfile offers two slots."""
    pytest.importorskip("torch")
    from reference.distributed import conformance

    assert not conformance.ranks_from_hostfile(1, {"localhost": 2}).passed
    assert conformance.ranks_from_hostfile(2, {"localhost": 2}).passed


@pytest.mark.slow
@pytest.mark.distributed
def test_hostfile_scenario_trains_like_a_single_process() -> None:
    pytest.importorskip("deepspeed")
    from tests.test_tuning_scenarios import run

    metrics, found, _ = run("distributed.deepspeed.hostfile")
    assert len(found) == 3 and all(c.passed for c in found), found
    assert metrics[0].name == "launch_to_exit" and metrics[0].value > 0
