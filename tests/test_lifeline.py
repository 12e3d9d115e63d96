"""`reference.lifeline`: a child started in a session of its own dies with its owner, even
when the owner is SIGKILLed the moment the child exists (nothing after `Popen` runs)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OWNER = """
import os, signal, subprocess
from reference.lifeline import Lifeline, preexec
lifeline = Lifeline()
child = subprocess.Popen(["sh", "-c", "sleep 600 & exec sleep 601"], start_new_session=True,
                         preexec_fn=preexec(lifeline.announce))
print(child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def living_members(group: int) -> list[int]:
    """Processes of the group that are not zombies (a container's init may never reap them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone while we looked
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_the_group_dies_with_an_owner_killed_right_after_starting_it() -> None:
    done = subprocess.run([sys.executable, "-c", OWNER], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    group = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while living_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    # the background `sleep 600` has no parent-death signal: only the lifeline can kill it
    assert living_members(group) == []
