"""Fault injection: `kill -9` of the runner's process group, of a worker or of a server at
seeded random points, concurrent resumes and truncated results files. After every fault:
each record finished before it is kept exactly once, no process of the run is left after
10 s, and `mlsuite run --resume --retry-errors` completes the selection.

Each trial runs the cheap planted scenarios of tests/planted/faults (a timed loop at two
points and a server with a process in its group and a child in the worker's group), with
torch kept out of the workers, so a trial takes seconds. Every process of a trial carries
the trial's TMPDIR in its environment, which is how orphans are found. Set
MLSUITE_FAULT_TRIALS for more trials and MLSUITE_FAULTS_REPORT=path to keep the summary.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from suite.schema import parse_record
from tests.conftest import REPO_ROOT
from tests.planted.faults.watch import processes_with

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("MLSUITE_FAULT_TRIALS", "20"))
SELECTION = "faults.s*"  # faults.steps n=1, n=2 and faults.server: three records
EXPECTED_RECORDS = 3
RUNS = EXPECTED_RECORDS * 2  # replicates = 2
ORPHAN_GRACE_S = 10.0
NO_TORCH = Path(__file__).parent / "planted" / "no_torch"
BUDGET = """[profiles.quick]
warmup_s = 0.0
warmup_calls = 1
min_samples = 10
max_time_s = 0.3
replicates = 2
"""


@dataclass
class Trial:
    seed: int
    victim: str
    after_runs: int  # the fault strikes once this many worker runs have finished...
    delay_s: float  # ...and this much later (capped at half the time a run took)
    killed: str = ""  # what was killed, or why nothing was
    finished_before: int = 0  # records complete on disk when the fault struck
    lost: int = 0
    duplicates: int = 0
    orphans: list[str] = field(default_factory=list)
    leftover_paths: list[str] = field(default_factory=list)
    resume_exit: int | None = None
    final_records: int = 0
    seconds: float = 0.0


class Sandbox:
    """One trial's results folder, temp dir and environment."""

    def __init__(self, root: Path) -> None:
        self.out, self.tmp = root / "out", root / "tmp"
        self.out.mkdir(parents=True)
        self.tmp.mkdir()
        self.config = root / "budget.toml"
        self.config.write_text(BUDGET)
        self.env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONPATH": str(NO_TORCH)}
        self.marker = str(self.tmp)

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "suite", "--packages", "tests.planted", "run", "--only", SELECTION,
                "--out", str(self.out), "--config", str(self.config), *extra]

    def start(self, *extra: str, log: str = "run") -> subprocess.Popen[bytes]:
        with (self.out.parent / f"{log}.log").open("ab") as sink:
            return subprocess.Popen(self.command(*extra), cwd=REPO_ROOT, env=self.env, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def complete_lines(self) -> list[str]:
        """Every complete (newline-terminated) record line in the results folder."""
        lines = []
        for path in sorted(self.out.glob("*.jsonl")):
            data = path.read_text(errors="replace")
            lines += [line for line in data[: data.rfind("\n") + 1].splitlines() if line.strip()]
        return lines

    def finished_runs(self) -> int:
        """Worker runs kept in the side file of the session (complete lines)."""
        return sum(path.read_bytes().count(b"\n") for path in self.out.glob("*.runs"))

    def orphans_after(self, grace_s: float) -> list[str]:
        deadline = time.monotonic() + grace_s
        while (left := processes_with(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [f"{pid} {command[:120]}" for pid, command in left.items()]

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tmp.iterdir())


def _wait_for(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _strike(sandbox: Sandbox, runner: subprocess.Popen[bytes], victim: str) -> str:
    """Send SIGKILL to the victim; returns what was killed."""
    if victim == "runner":
        os.killpg(runner.pid, signal.SIGKILL)  # the runner's whole process group, as `kill -9 -PGID`
        return "runner group"
    needle = {"worker": "suite.worker", "server": "http.server"}[victim]
    found: list[int] = []

    def present() -> bool:
        found[:] = [pid for pid, command in processes_with(sandbox.marker).items() if needle in command]
        return bool(found) or runner.poll() is not None

    if not _wait_for(present, 60) or not found:
        return f"no {victim} was running (the run had ended)"
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return f"{victim} {found}"


def _check_records(sandbox: Sandbox, before: list[str], trial: Trial) -> None:
    after = sandbox.complete_lines()
    replaced = [line for path in sandbox.out.glob("*.replaced") for line in path.read_text().splitlines()]
    trial.lost = sum(1 for line in before if line not in after and line not in replaced)
    keys = [parse_record(line, "trial").key for line in after]
    trial.duplicates = len(keys) - len(set(keys))
    trial.final_records = len(set(keys))


def run_trial(seed: int, root: Path) -> Trial:
    rng = random.Random(seed)
    trial = Trial(seed=seed, victim=rng.choice(["runner", "worker", "server"]), after_runs=rng.randrange(RUNS),
                  delay_s=round(rng.uniform(0, 2), 2))
    began = time.monotonic()
    sandbox = Sandbox(root)
    runner = sandbox.start()
    _wait_for(lambda: sandbox.finished_runs() >= trial.after_runs or runner.poll() is not None, 300)
    # Strike inside the next run, not after the last one: at most half the time a run has taken
    # so far (on a fast host two light runs end within the 2 s the seed may draw).
    per_run_s = (time.monotonic() - began) / max(sandbox.finished_runs(), 1)
    trial.delay_s = round(min(trial.delay_s, per_run_s / 2), 2)
    time.sleep(trial.delay_s)
    if runner.poll() is None:
        trial.killed = _strike(sandbox, runner, trial.victim)
    else:
        trial.killed = "nothing: the run had ended"
    if trial.victim == "runner":
        runner.wait()
        before = sandbox.complete_lines()
    else:
        before = sandbox.complete_lines()
        runner.wait(timeout=800)
        assert runner.returncode == 0, (sandbox.out.parent / "run.log").read_text()[-3000:]
    trial.finished_before = len(before)
    trial.orphans = sandbox.orphans_after(ORPHAN_GRACE_S)
    if trial.victim != "runner":  # a runner that lives cleans up after its worker by itself
        trial.leftover_paths = sandbox.leftovers()
    resume = sandbox.start("--resume", "--retry-errors", log="resume")
    trial.resume_exit = resume.wait(timeout=800)
    trial.orphans += sandbox.orphans_after(ORPHAN_GRACE_S)
    trial.leftover_paths += sandbox.leftovers()
    trial.leftover_paths += [p.name for p in sandbox.out.glob("*.lock")]
    _check_records(sandbox, before, trial)
    trial.seconds = round(time.monotonic() - began, 1)
    return trial


def _report(name: str, payload: dict) -> None:  # type: ignore[type-arg]
    target = os.environ.get("MLSUITE_FAULTS_REPORT")
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = payload
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


def _report_trial(trial: Trial) -> None:
    """Add the trial to the kill -9 summary, totals recomputed over every trial so far."""
    target = os.environ.get("MLSUITE_FAULTS_REPORT")
    existing = json.loads(Path(target).read_text()).get("kill_9", {}) if target and Path(target).exists() else {}
    trials = {t["seed"]: t for t in existing.get("per_trial", [])}
    trials[trial.seed] = asdict(trial)
    done = sorted(trials.values(), key=lambda t: t["seed"])
    _report("kill_9", {
        "trials": len(done), "records_lost": sum(t["lost"] for t in done),
        "duplicates": sum(t["duplicates"] for t in done), "orphans": sum(len(t["orphans"]) for t in done),
        "leftover_paths": sum(len(t["leftover_paths"]) for t in done),
        "resumes_failed": sum(t["resume_exit"] != 0 for t in done),
        "incomplete": sum(t["final_records"] != EXPECTED_RECORDS for t in done),
        "records_finished_before_the_fault": sum(t["finished_before"] for t in done),
        "victims": {v: sum(t["victim"] == v for t in done) for v in ("runner", "worker", "server")},
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "per_trial": done,
    })


@pytest.mark.timeout(1800)  # a trial takes ~25 s on an idle 2-core host, minutes under a load of 15-20
@pytest.mark.parametrize("seed", range(TRIALS))
def test_kill_9_of_runner_worker_or_server_loses_nothing_and_leaves_nothing(tmp_path: Path, seed: int) -> None:
    trial = run_trial(seed, tmp_path)
    _report_trial(trial)
    assert (trial.lost, trial.duplicates, trial.orphans, trial.leftover_paths) == (0, 0, [], []), asdict(trial)
    assert trial.resume_exit == 0 and trial.final_records == EXPECTED_RECORDS, asdict(trial)
    if trial.victim == "runner":
        assert trial.killed == "runner group"


def _cut_run(tmp_path: Path) -> tuple[Sandbox, Path, bytes]:
    """A finished run whose results file is then cut back to its first record."""
    sandbox = Sandbox(tmp_path)
    first = sandbox.start()
    assert first.wait(timeout=300) == 0
    (path,) = sandbox.out.glob("*.jsonl")
    whole = path.read_bytes()
    return sandbox, path, whole


def test_concurrent_resumes_write_each_record_once(tmp_path: Path) -> None:
    sandbox, path, whole = _cut_run(tmp_path)
    path.write_bytes(whole[: whole.index(b"\n") + 1])
    resumes = [sandbox.start("--resume", log=f"resume-{i}") for i in range(3)]
    codes = [r.wait(timeout=300) for r in resumes]
    logs = [(tmp_path / f"resume-{i}.log").read_text() for i in range(3)]
    keys = [parse_record(line, "resumed").key for line in sandbox.complete_lines()]
    _report("concurrent_resumes", {"resumes": 3, "exit_codes": codes, "records": len(keys),
                                   "duplicates": len(keys) - len(set(keys))})
    assert len(keys) == EXPECTED_RECORDS and len(set(keys)) == EXPECTED_RECORDS
    assert 0 in codes and set(codes) <= {0, 2}
    for code, log in zip(codes, logs, strict=True):
        if code == 2:
            assert "is being written by another mlsuite run (pid " in log and "Traceback" not in log
    assert sandbox.orphans_after(ORPHAN_GRACE_S) == [] and sandbox.leftovers() == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_results_file_cut_anywhere_resumes_without_losing_a_whole_record(tmp_path: Path, seed: int) -> None:
    sandbox, path, whole = _cut_run(tmp_path)
    cut = random.Random(seed).randrange(1, len(whole) - 1)
    path.write_bytes(whole[:cut])
    kept = [line for line in whole[:cut].decode().split("\n")[:-1] if line]  # the lines that were whole
    resume = sandbox.start("--resume", log="resume")
    assert resume.wait(timeout=800) == 0, (tmp_path / "resume.log").read_text()[-2000:]
    lines = sandbox.complete_lines()
    assert lines[: len(kept)] == kept
    keys = [parse_record(line, "resumed").key for line in lines]
    assert len(keys) == len(set(keys)) == EXPECTED_RECORDS
    partial = path.with_name(path.name + ".partial")
    tail = whole[:cut][whole[:cut].rfind(b"\n") + 1:]
    if tail and tail.decode(errors="replace") in lines:  # only its newline was lost: a whole record, kept
        assert not partial.exists()
    elif tail:
        assert partial.read_bytes() == tail + b"\n"
    else:
        assert not partial.exists()
