"""Ray Tune on a real two-node Ray cluster (`ray start --head` + `ray start --address`) on
loopback: trials run on both nodes, ASHA stops them only at its rungs there too, and no Ray
process outlives the cluster."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("optuna")
psutil = pytest.importorskip("psutil")

from reference.tuning import conformance, objectives, ray_cluster, ray_tune  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
ASHA = ray_tune.Asha(max_t=9, grace_period=1, reduction_factor=3)


def placement(outcome: ray_tune.TuneOutcome) -> dict[str, int]:
    found: dict[str, int] = {}
    for trial in outcome.trials:
        found[trial.node] = found.get(trial.node, 0) + 1
    return found


def paced(objective: objectives.Objective, seconds: float) -> objectives.Objective:
    """The objective with each report taking `seconds`, so trials overlap on the nodes
    (instant trials could all run one after another on the first free node)."""

    def fn(params, report):  # type: ignore[no-untyped-def]
        def slow_report(step: int, value: float) -> None:
            time.sleep(seconds)
            report(step, value)

        return objective.fn(params, slow_report)

    return dataclasses.replace(objective, fn=fn)


def run_asha(tmp_path: Path, scheduler=None) -> ray_tune.TuneOutcome:  # type: ignore[no-untyped-def]
    return ray_tune.run_tune(paced(objectives.learning_curve(steps=9), 0.05), num_samples=9, storage_dir=tmp_path,
                             seed=0, scheduler=scheduler or ASHA.scheduler())


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    with ray_cluster.loopback_cluster(nodes=2, cpus_per_node=1) as running:
        yield running
    assert running.reaped == 0, "Ray processes were still alive after the nodes were stopped"
    assert ray_tune._session_processes(running.session_root) == []
    assert not running.session_root.exists()


def test_two_nodes_joined_with_their_own_cpus(cluster) -> None:  # type: ignore[no-untyped-def]
    import ray

    assert len(cluster.node_ids) == 2 and cluster.node_ids[0] in ray_cluster.head_nodes()
    assert ray.cluster_resources()["CPU"] == 2
    assert 0 < cluster.head_s < cluster.start_s


def test_trials_run_on_both_nodes_and_asha_stops_on_rungs(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outcome = run_asha(tmp_path)
    found = [conformance.trials_on_every_node("tuning.ray.cluster.trials_on_every_node", placement(outcome),
                                              cluster.node_ids),
             *conformance.asha_stops_at_rungs("tuning.ray.cluster.asha", [t.stopped_at for t in outcome.trials],
                                              ASHA.rungs(), ASHA.max_t)]
    assert all(c.passed for c in found), found
    assert set(placement(outcome)) == set(cluster.node_ids)


@pytest.mark.breaks("tuning.ray.cluster.asha.stops_on_rungs")
def test_an_off_by_one_grace_period_is_caught_on_the_cluster(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Planted bug: a scheduler built with grace_period + 1 while ASHA(grace_period=1) is claimed."""
    outcome = run_asha(tmp_path, ray_tune.Asha(max_t=9, grace_period=2, reduction_factor=3).scheduler())
    found = conformance.asha_stops_at_rungs("tuning.ray.cluster.asha", [t.stopped_at for t in outcome.trials],
                                            ASHA.rungs(), ASHA.max_t)
    assert not found[0].passed


@pytest.mark.breaks("tuning.ray.cluster.trials_on_every_node")
def test_placement_check_catches_a_node_that_never_ran_a_trial(cluster) -> None:  # type: ignore[no-untyped-def]
    """Planted bug: every trial pinned to the head (the worker joined but got nothing)."""
    check = conformance.trials_on_every_node("tuning.ray.cluster.trials_on_every_node",
                                             {cluster.node_ids[0]: 9}, cluster.node_ids)
    assert not check.passed and "no trial on" in check.detail


def test_a_second_cluster_in_the_same_process_is_refused(cluster) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="already connected"):
        with ray_cluster.loopback_cluster():
            pass


@pytest.mark.breaks("tuning.ray.cluster.asha.stopped_early")
def test_a_scheduler_that_never_stops_a_trial_is_caught(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Planted bug: FIFO scheduling while ASHA is claimed (every trial runs to max_t)."""
    from ray.tune.schedulers import FIFOScheduler

    outcome = run_asha(tmp_path, FIFOScheduler())
    found = conformance.asha_stops_at_rungs("tuning.ray.cluster.asha", [t.stopped_at for t in outcome.trials],
                                            ASHA.rungs(), ASHA.max_t)
    assert found[0].passed and not found[1].passed
