"""The launcher-driven job: no rank outlives a launcher that is killed outright."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")

from reference.distributed.rankjob import JobSpec  # noqa: E402

KILLED_LAUNCHER = """
import os, signal
from reference.distributed.rankjob import JobSpec, RankJob
job = RankJob(JobSpec(strategies=("ddp",)), 2)
job.start()
print(job.process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def session_members(session_id: int) -> list[str]:
    listed = subprocess.run(["ps", "-o", "pid=", "-s", str(session_id)], capture_output=True, text=True)
    return listed.stdout.split()


@pytest.mark.distributed
def test_ranks_exit_when_their_launcher_is_killed() -> None:
    launcher = subprocess.run([sys.executable, "-c", KILLED_LAUNCHER], capture_output=True, text=True, timeout=180)
    job_session = int(launcher.stdout.split()[0])  # torchrun leads the job's session
    deadline = time.monotonic() + 60
    while session_members(job_session) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_members(job_session) == []


def test_job_spec_round_trips_through_json() -> None:
    spec = JobSpec(strategies=("ddp", "torch.fsdp2"), device="cpu", size="small", seed=3, threads_per_rank=2)
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.resolved_backend == "gloo" and JobSpec(strategies=(), device="cuda").resolved_backend == "nccl"
