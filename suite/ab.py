"""`mlsuite ab BASE HEAD`: the pull-request gate as users run it (like `asv continuous`).

Both commits are checked out as git worktrees; their workers run with the worktree's own
code first on the path, in this environment. The selected scenarios run alternately,
BASE, HEAD, HEAD, BASE, … (each round reverses the order, so neither side always runs
first), on the same host, and the verdict is decided on run-level statistics, paired by
round, so slow drift of the host cancels out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from suite import instructions, registry
from suite.compare import GateResult, RegressionCheck, gate
from suite.environment import fingerprint
from suite.errors import SuiteError
from suite.instructions import METRIC
from suite.profiles import Budget
from suite.requirements import first_unmet
from suite.runner import (
    REPO_ROOT,
    Job,
    RunHeader,
    Worker,
    merge_runs,
    plan,
    run_pooled,
    started_worker,
    worker_places,
)
from suite.schema import Git, Record, Status, append_record, config_hash

WORKER_PROTOCOL_MARK = "PROTOCOL = 2"  # in suite/worker.py of every commit `ab` can run


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                              timeout=120).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise SuiteError(f"git {' '.join(args)}: {exc.stderr.strip() or exc}") from None
    except OSError as exc:
        raise SuiteError(f"git: {exc}") from None


def resolve(repo: Path, rev: str) -> str:
    found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        raise SuiteError(f"{rev!r} is not a commit of this repository")
    return found.stdout.strip()


@contextmanager
def worktrees(repo: Path, commits: list[str]) -> Iterator[dict[str, Path]]:
    """One detached worktree per distinct commit, removed afterwards whatever happens."""
    parent = Path(tempfile.mkdtemp(prefix="mlsuite-ab-"))
    made: dict[str, Path] = {}
    try:
        for commit in dict.fromkeys(commits):
            folder = parent / commit[:12]
            _git(repo, "worktree", "add", "--detach", "--force", str(folder), commit)
            made[commit] = folder
            worker = folder / "suite" / "worker.py"
            if not worker.exists() or WORKER_PROTOCOL_MARK not in worker.read_text():
                raise SuiteError(f"commit {commit[:12]} predates the worker protocol `mlsuite ab` needs; "
                                 f"compare its results files with `mlsuite gate` instead")
        yield made
    finally:
        for folder in made.values():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(folder)],
                           capture_output=True, timeout=120)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True, timeout=120)
        shutil.rmtree(parent, ignore_errors=True)


@dataclass
class Side:
    name: str  # "base" or "head"
    header: RunHeader
    jobs: list[Job]
    path: Path


def _order(round_index: int) -> tuple[int, int]:
    """ABBA: base first in even rounds, head first in odd ones."""
    return (0, 1) if round_index % 2 == 0 else (1, 0)


def run_rounds(sides: tuple[Side, Side], rounds: int,
               on_start: Callable[[str, int, int], None] | None = None) -> None:
    """Every job's runs of both sides, round by round, alternating which side goes first
    (timed runs one at a time; counted runs side by side, `runner.worker_places`)."""
    for side in sides:
        for job in side.jobs:
            unmet = first_unmet(job.cls().requirements(job.params))
            if unmet is not None:
                job.outcomes = [{"status": Status.skipped.value, "reason": unmet, "duration_s": 0.0}]
    due = [(round_index, sides[which], sides[which].jobs[position]) for round_index in range(rounds)
           for position in range(len(sides[0].jobs)) for which in _order(round_index)]
    total = len(due)

    def pick(running: list[tuple[int, Side, Job]]) -> tuple[int, Side, Job] | None:
        due[:] = [entry for entry in due if not entry[2].finished]  # a broken first run is not replicated
        for entry in due:
            round_index, side, job = entry
            if all(job is not other[2] for other in running):  # a job's runs one at a time
                due.remove(entry)
                if on_start:
                    on_start(f"{side.name} {job.label} round {round_index + 1}/{rounds}", total - len(due), total)
                return entry
        return None

    def start(entry: tuple[int, Side, Job], cpus: list[int] | None) -> AbstractContextManager[Worker]:
        round_index, side, job = entry
        return started_worker(side.header, job.cls, job.params, replicate=round_index,
                              conformance=not job.outcomes, artifacts=None, cpus=cpus)

    with closing(sides[0].header), closing(sides[1].header):
        run_pooled(pick, start, lambda entry, outcome: entry[2].outcomes.append(outcome), worker_places())
    for side in sides:
        for job in side.jobs:
            status, reason, merged, runs = merge_runs(job.outcomes)
            duration = sum(o["duration_s"] for o in job.outcomes)
            append_record(side.path, side.header.record(job.cls, job.params, status, reason, duration, merged, runs))


@dataclass(frozen=True)
class AbResult:
    gate: GateResult
    base_path: Path
    head_path: Path
    verdicts_path: Path


def count_calibrated(floors: dict, scenario: str, params: dict) -> bool:
    """Whether the calibrated floors hold a count of this configuration: one counted run per
    side can be judged then, its between-run spread known from the calibration's K runs."""
    config = config_hash(scenario, params)
    return any(key[:2] == (scenario, config) and key[2].endswith(METRIC) for key in floors)


def ab(base_rev: str, head_rev: str, pattern: str, profile: str, budget: Budget, out_dir: Path, *,
       rounds: int, where: dict[str, str] | None = None, rules: list[RegressionCheck] | None = None,
       floors: dict | None = None, packages: tuple[str, ...] = registry.DEFAULT_PACKAGES,
       repo: Path = REPO_ROOT, on_start: Callable[[str, int, int], None] | None = None) -> AbResult:
    counting = instructions.requested()
    if rounds < (1 if counting else 2):
        raise SuiteError("--rounds must be at least 2: a verdict needs the spread between runs"
                         + (" (1 for counts this machine has calibrated)" if counting else ""))
    commits = [resolve(repo, base_rev), resolve(repo, head_rev)]
    registry.discover(packages)
    selected = list(registry.select(pattern, profile, where))
    if not selected:
        raise SuiteError(f"no scenario matching {pattern!r} with {where or {}} takes part in profile {profile!r}")
    if rounds == 1 and (uncalibrated := [f"{cls.id} {params}" for cls, params in selected
                                         if not count_calibrated(floors or {}, cls.id, params)]):
        raise SuiteError("--rounds 1 takes the spread between runs from this machine's calibrated count floors "
                         "(`mlsuite calibrate --count instructions`), and there are none for: "
                         + "; ".join(uncalibrated))
    budget = budget.model_copy(update={"replicates": rounds})
    env = fingerprint(budget.seed)
    run_id = uuid.uuid4().hex[:12]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = out_dir / f"{stamp}-{env.machine_id[:8]}-{commits[0][:8]}-{commits[1][:8]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with worktrees(repo, commits) as roots:
        sides = tuple(
            Side(name, RunHeader(run_id=f"{run_id}-{name}", profile=profile, git=Git(commit=commit, dirty=False),
                                 env=env, budget=budget, root=roots[commit]),
                 plan(selected, budget), Path(f"{prefix}-{name}.jsonl"))
            for name, commit in zip(("base", "head"), commits))
        run_rounds(sides, rounds, on_start)  # type: ignore[arg-type]
    from suite.schema import load_records

    base, head = load_records(sides[0].path), load_records(sides[1].path)
    result = gate(base, head, rules, floors=floors, paired=True, allow_source_change=True)
    verdicts = Path(f"{prefix}-verdicts.json")
    verdicts.write_text(json.dumps(verdict_summary(result, base, head, rounds), indent=1, default=str,
                                   allow_nan=False) + "\n")
    return AbResult(result, sides[0].path, sides[1].path, verdicts)


def verdict_summary(result: GateResult, base: list[Record], head: list[Record], rounds: int) -> dict:
    """The verdicts file of `mlsuite ab`: strict JSON, non-finite numbers as null."""
    return {
        "base": base[0].git.commit, "head": head[0].git.commit, "rounds": rounds,
        "machine_id": head[0].env.machine_id, "passed": result.passed,
        "failures": result.failures,
        "comparisons": [row.to_json() for row in result.comparisons],
        "oversubscribed_runs": sum(run.oversubscribed for r in [*base, *head] for run in r.runs),
        "load_before": [run.load_before for r in head for run in r.runs],
    }
