"""Runs selected scenarios, each (scenario, params) as R process runs interleaved round
robin across the selection, and appends one record per (scenario, params) to a JSONL file
as soon as its last run is in.

The process run is the unit of replication: samples inside one process share its luck
(placement, frequency, neighbours), so R runs, spread over the whole session, give the
between-run spread that a single run hides. Each worker is pinned to the least busy CPUs
with as many threads, and records what the host was doing. A crash, a hang or an exception
becomes an `error` run and the session goes on; every finished run is kept in a side file,
so an interrupted session resumes without redoing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import suite
from suite import host, registry, stats
from suite.environment import fingerprint, git_state
from suite.errors import SuiteError
from suite.profiles import Budget
from suite.requirements import first_unmet
from suite.schema import (
    Check,
    Environment,
    Git,
    Metric,
    Record,
    RunHost,
    Status,
    append_record,
    config_hash,
    load_records,
)

STDERR_TAIL = 1500
REPO_ROOT = Path(__file__).resolve().parent.parent


def source_hash(cls: type[registry.Scenario], root: Path = REPO_ROOT) -> str:
    """Hash of every source file in the scenario's family folder under `root`, so a change
    to the technique (not only to its glue) changes the hash."""
    folder = root.joinpath(*cls.__module__.split(".")[:-1])
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class RunHeader:
    """What every record of one session shares."""

    run_id: str
    profile: str
    git: Git
    env: Environment
    budget: Budget
    root: Path = REPO_ROOT  # the code the workers run (a git worktree for `mlsuite ab`)

    def record(self, cls: type[registry.Scenario], params: dict[str, Any], status: Status,
               reason: str, duration_s: float, outcome: dict[str, Any] | None = None,
               runs: list[RunHost] | None = None) -> Record:
        outcome = outcome or {}
        env = self.env
        if outcome.get("threads"):
            env = env.model_copy(update={"threads": {**env.threads, **outcome["threads"]}})
        return Record(
            run_id=self.run_id, time_utc=datetime.now(UTC).isoformat(timespec="seconds"),
            suite_version=suite.__version__, profile=self.profile, git=self.git, env=env,
            scenario=cls.id, params=params, config_hash=config_hash(cls.id, params),
            source_hash=source_hash(cls, self.root), status=status, reason=reason,
            duration_s=round(duration_s, 3), metrics=outcome.get("metrics", []),
            checks=outcome.get("checks", []), provenance=outcome.get("provenance", {}), runs=runs or [],
        )


def _thread_environment(threads: int, root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # set iteration order, and so the work done, the same in every run
    return env


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return text[-STDERR_TAIL:]


def run_worker(header: RunHeader, cls: type[registry.Scenario], params: dict[str, Any], *,
               replicate: int, conformance: bool, artifacts: Path | None) -> dict[str, Any]:
    """One worker process in a session of its own (so a timeout kills its whole tree:
    torchrun ranks, servers), pinned to the CPUs chosen for it. Returns its outcome:
    status, reason, metrics, checks, provenance, host state and duration."""
    cpus = host.choose_cpus(header.budget.threads)
    with tempfile.TemporaryDirectory(prefix="mlsuite-job-") as tmp:
        job, result, log = Path(tmp, "job.json"), Path(tmp, "result.json"), Path(tmp, "log.txt")
        job.write_text(json.dumps({
            "scenario": cls.id, "params": params, "profile": header.profile,
            "budget": header.budget.model_dump(), "module": cls.__module__,
            "artifacts": str(artifacts) if artifacts else None, "cpus": cpus,
            "replicate": replicate, "conformance": conformance,
        }))
        start = time.perf_counter()

        def failed(reason: str) -> dict[str, Any]:
            return {"status": Status.error.value, "reason": reason, "duration_s": time.perf_counter() - start}

        with log.open("w") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "suite.worker", str(job), str(result)],
                stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True,
                env=_thread_environment(len(cpus), header.root), cwd=header.root,
            )
            try:
                code = process.wait(timeout=cls.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return failed(f"timed out after {cls.timeout_s:.0f}s; last output: {_tail(log)}")
            except BaseException:
                _kill_group(process)
                raise
            finally:
                _kill_group(process)  # reap anything the scenario left running
        if not result.exists():
            return failed(f"worker exited with code {code} and no result: {_tail(log)}")
        outcome = json.loads(result.read_text())
        outcome["duration_s"] = time.perf_counter() - start
        return outcome


def merge_runs(outcomes: list[dict[str, Any]]) -> tuple[Status, str, dict[str, Any], list[RunHost]]:
    """One record's content from its runs: each metric combined over the runs that have it
    (hierarchical CI), checks from the conformance run, the worst status with its reason."""
    by_name: dict[str, list[Metric]] = {}
    for outcome in outcomes:
        for raw in outcome.get("metrics", []):
            metric = Metric.model_validate(raw)
            by_name.setdefault(metric.name, []).append(metric)
    first = outcomes[0]
    merged = {"metrics": [stats.combine_runs(runs) for runs in by_name.values()],
              "checks": [Check.model_validate(c) for c in first.get("checks", [])],
              "provenance": first.get("provenance", {}), "threads": first.get("threads", {})}
    runs = [RunHost(index=i, status=Status(o["status"]), duration_s=round(o["duration_s"], 3),
                    **o.get("host", {"threads": 0, "cpus": [], "load_before": [], "load_after": []}))
            for i, o in enumerate(outcomes)]
    worst = next((o for o in outcomes if o["status"] == Status.error.value), None)
    worst = worst or next((o for o in outcomes if o["status"] != Status.ok.value), first)
    reason = worst["reason"]
    if len(outcomes) > 1 and worst is not first and reason:
        reason = f"run {outcomes.index(worst)}: {reason}"
    return Status(worst["status"]), reason, merged, runs


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def results_path(out_dir: Path, header: RunHeader) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return out_dir / f"{stamp}-{header.env.machine_id[:8]}-{header.git.commit[:8]}-{header.profile}.jsonl"


def latest_results(out_dir: Path, machine_id: str, profile: str) -> Path | None:
    """The newest results file of this machine and profile, or of a session that was
    interrupted before its first record (only its side file of runs exists)."""
    pattern = f"*-{machine_id[:8]}-*-{profile}"
    candidates = sorted({p.with_suffix(".jsonl") for p in [*out_dir.glob(f"{pattern}.jsonl"),
                                                            *out_dir.glob(f"{pattern}.runs")]})
    return candidates[-1] if candidates else None


def runs_path(results: Path) -> Path:
    """The side file of finished worker runs whose record is not complete yet."""
    return results.with_suffix(".runs")


@dataclass
class Job:
    cls: type[registry.Scenario]
    params: dict[str, Any]
    replicates: int
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return self.cls.id, config_hash(self.cls.id, self.params)

    @property
    def label(self) -> str:
        return f"{self.cls.id} {self.params}"

    @property
    def finished(self) -> bool:
        """All runs in, or the first run broke (replicating a broken or skipped run says nothing)."""
        return len(self.outcomes) >= self.replicates or (
            len(self.outcomes) == 1 and self.outcomes[0]["status"] in (Status.error.value, Status.skipped.value))


def plan(jobs: list[tuple[type[registry.Scenario], dict[str, Any]]], budget: Budget) -> list[Job]:
    return [Job(cls, params, min(budget.replicates, cls.max_replicates or budget.replicates))
            for cls, params in jobs]


def round_robin(jobs: list[Job]) -> Iterator[Job]:
    """Run r of every job before run r+1 of any: slow drift of the host spreads over all."""
    while pending := [job for job in jobs if not job.finished]:
        yield from (job for job in pending if not job.finished)


def _load_runs(path: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: that run is simply redone
        found.setdefault((entry["scenario"], entry["config_hash"]), []).append(entry["outcome"])
    return found


def _keep_run(path: Path, job: Job, outcome: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps({"scenario": job.key[0], "config_hash": job.key[1], "outcome": outcome},
                                default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def session(header: RunHeader, jobs: list[Job], path: Path, out_dir: Path, *,
            on_start: Callable[[str, int, int], None] | None = None,
            on_record: Callable[[Record], None] | None = None) -> None:
    """Run every job's runs round robin; write each record when its last run is in."""
    side = runs_path(path)
    side.parent.mkdir(parents=True, exist_ok=True)
    kept = _load_runs(side)
    for job in jobs:
        job.outcomes = kept.get(job.key, [])[: job.replicates]
    total = sum(job.replicates for job in jobs)
    started = sum(len(job.outcomes) for job in jobs)
    for job in jobs:
        unmet = first_unmet(job.cls().requirements(job.params))
        if unmet is not None:
            job.outcomes = [{"status": Status.skipped.value, "reason": unmet, "duration_s": 0.0}]
            _finish(header, job, path, on_record)
    for job in round_robin(jobs):
        started += 1
        if on_start:
            on_start(f"{job.label} run {len(job.outcomes) + 1}/{job.replicates}", started, total)
        artifacts = out_dir / "artifacts" / header.run_id / job.cls.id / job.key[1]
        outcome = run_worker(header, job.cls, job.params, replicate=len(job.outcomes),
                             conformance=not job.outcomes, artifacts=artifacts if not job.outcomes else None)
        job.outcomes.append(outcome)
        _keep_run(side, job, outcome)
        if job.finished:
            _finish(header, job, path, on_record)
    side.unlink(missing_ok=True)


def _finish(header: RunHeader, job: Job, path: Path, on_record: Callable[[Record], None] | None) -> None:
    status, reason, merged, runs = merge_runs(job.outcomes)
    duration = sum(o["duration_s"] for o in job.outcomes)
    record = header.record(job.cls, job.params, status, reason, duration, merged, runs)
    append_record(path, record)
    if on_record:
        on_record(record)


def run(pattern: str, profile: str, budget: Budget, out_dir: Path, *, where: dict[str, str] | None = None,
        resume: bool = False,
        packages: tuple[str, ...] = registry.DEFAULT_PACKAGES,
        on_start: Callable[[str, int, int], None] | None = None,
        on_record: Callable[[Record], None] | None = None,
        on_warning: Callable[[str], None] | None = None) -> Path:
    """Run every selected (scenario, params); returns the results file written."""
    for module, error in registry.discover(packages).items():
        if on_warning:
            on_warning(f"scenario module {module} failed to import: {error}")
    selected = list(registry.select(pattern, profile, where))
    if not selected:
        raise SuiteError(f"no scenario matching {pattern!r} with {where or {}} takes part in profile {profile!r}")
    env = fingerprint(budget.seed)
    header = RunHeader(run_id=uuid.uuid4().hex[:12], profile=profile, git=git_state(REPO_ROOT),
                       env=env, budget=budget)
    done: set[tuple[str, str]] = set()
    path = latest_results(out_dir, env.machine_id, profile) if resume else None
    if path is not None and path.exists():
        existing = load_records(path)
        header.run_id = existing[0].run_id
        done = {r.key for r in existing}
    elif path is None:
        path = results_path(out_dir, header)
    jobs = [job for job in plan(selected, budget) if job.key not in done]
    session(header, jobs, path, out_dir, on_start=on_start, on_record=on_record)
    return path
