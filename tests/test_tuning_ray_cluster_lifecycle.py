"""A Ray cluster of its own per test (the other module shares one): the scenario end to end,
and a process left in a cluster's session reaped when the cluster stops."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ray")
pytest.importorskip("optuna")

from reference.ports import free_ports  # noqa: E402
from reference.tuning import conformance, ray_cluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.mark.breaks("tuning.ray.cluster.nothing_left_running")
def test_a_process_left_in_the_cluster_session_is_reaped_and_reported() -> None:
    """Planted leak: a process of the cluster's session (its temp dir on the command line)
    still running when the nodes have stopped."""
    with ray_cluster.loopback_cluster(nodes=1) as single:
        leak = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(single.session_root)])
    leak.wait(timeout=30)  # reaped by the cluster's exit, not by this test
    assert single.reaped == 1
    assert not conformance.nothing_left_running("tuning.ray.cluster.nothing_left_running", single.reaped).passed


def test_scenario_places_trials_on_both_nodes_and_stops_the_cluster() -> None:
    from tests.test_tuning_scenarios import run

    metrics, found, provenance = run("tuning.ray.cluster")
    assert found and all(c.passed for c in found), found
    values = {m.name: m.value for m in metrics}
    assert values["trials_on_node0"] + values["trials_on_node1"] == 9 and values["cluster_start"] > 0
    assert provenance["listening"], "the addresses Ray listens on are recorded"


def test_every_port_a_node_is_given_is_its_own() -> None:
    """Ray refuses to start a node whose components share a port; one bind after another
    once gave the metrics exporter the GCS port."""
    ports = free_ports(64)
    assert len(set(ports)) == 64 and all(1024 <= port < 65536 for port in ports)
