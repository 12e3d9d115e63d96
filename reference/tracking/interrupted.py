"""A run killed mid-way. `python -m reference.tracking.interrupted TOOL ROOT SEED` logs a
seeded metric stream until it is killed, printing JSON lines: first the run's locator, then
{"flushed": n} each time the first n steps have been flushed. `interrupt` starts it in a
session of its own, waits for enough flushed steps and SIGKILLs it, as a crash or an OOM
kill would; helper processes the tracker started (wandb-core) are left to notice that on
their own, and whatever of the session is still alive after a grace period is killed.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference.tracking import trackers
from reference.tracking.rundata import RunData, value_at

KEYS = ("loss", "accuracy")
PARAMS = {"purpose": "interrupted", "lr": 0.01}
FLUSH_EVERY = 5
STEP_PAUSE_S = 0.005
MAX_STEPS = 200_000  # a bound, so a child that is never killed still ends
ORPHAN_GRACE_S = 15.0


def step_metrics(seed: int, step: int) -> dict[str, float]:
    return {key: value_at(seed, index, step) for index, key in enumerate(KEYS)}


def expected_prefix(seed: int, steps: int) -> RunData:
    """What the first `steps` steps of the stream were."""
    series = {key: [(s, step_metrics(seed, s)[key]) for s in range(steps)] for key in KEYS}
    return RunData(params=dict(PARAMS), metrics=series)


def log_until_killed(tool: str, root: Path, seed: int, options: dict[str, Any] | None = None) -> None:
    tracker = trackers.create(tool, root, **(options or {}))
    tracker.start("interrupted", dict(PARAMS))
    print(json.dumps({"locator": tracker.locator()}), flush=True)
    for step in range(MAX_STEPS):
        tracker.log_metrics(step, step_metrics(seed, step))
        if (step + 1) % FLUSH_EVERY == 0:
            tracker.flush()
            print(json.dumps({"flushed": step + 1}), flush=True)
        time.sleep(STEP_PAUSE_S)
    tracker.finish()


@dataclass(frozen=True)
class Interrupted:
    locator: dict[str, str]
    flushed: int  # steps the child had flushed when it was killed
    exit_code: int
    orphans_killed: int  # helper processes still alive after the grace period


def interrupt(tool: str, root: Path, seed: int, *, after_flushed: int, options: dict[str, Any] | None = None,
              timeout_s: float = 180.0) -> Interrupted:
    """Run the child (its tracker built with `options`: a logging mode) until it has flushed
    `after_flushed` steps, then SIGKILL its session."""
    child = subprocess.Popen([sys.executable, "-m", "reference.tracking.interrupted", tool, str(root), str(seed),
                              json.dumps(options or {})],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    locator: dict[str, Any] = {}
    flushed = 0
    deadline = time.monotonic() + timeout_s
    try:
        assert child.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            while flushed < after_flushed:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError(f"{tool} child ended or stalled after {flushed} flushed steps "
                                       f"(exit code {child.poll()})")
                if not selector.select(timeout=1.0):
                    continue
                line = child.stdout.readline()
                message = json.loads(line) if line.strip() else {}
                locator = message.get("locator", locator)
                flushed = message.get("flushed", flushed)
    finally:
        child.kill()  # the training process dies; its tracker helpers (wandb-core) get no warning
        child.wait()
        orphans = _end_session(child.pid)
    return Interrupted(locator=locator, flushed=flushed, exit_code=child.returncode, orphans_killed=orphans)


def _session_members(session_id: int) -> list[Any]:
    import psutil

    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id:
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def _end_session(session_id: int) -> int:
    """Give helpers the killed process started ORPHAN_GRACE_S to notice and exit on their
    own, as they would after a real crash; then SIGKILL the session, so none outlives us.
    Returns how many had to be killed."""
    import psutil

    _, alive = psutil.wait_procs(_session_members(session_id), timeout=ORPHAN_GRACE_S)
    try:
        os.killpg(session_id, signal.SIGKILL)
    except ProcessLookupError:
        pass
    psutil.wait_procs(alive, timeout=ORPHAN_GRACE_S)
    return len(alive)


if __name__ == "__main__":
    log_until_killed(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
