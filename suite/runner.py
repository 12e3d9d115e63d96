"""Runs selected scenarios, each in its own subprocess with a timeout, appending one record
per (scenario, params) to a JSONL file as soon as it is known.

A crash, a hang or an exception in one scenario becomes an `error` record and the run goes
on; an interrupted run keeps every record already written, and `resume` skips them.
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import suite
from suite import registry
from suite.environment import fingerprint, git_state
from suite.errors import SuiteError
from suite.profiles import Budget
from suite.requirements import first_unmet
from suite.schema import Environment, Git, Record, Status, append_record, load_records

STDERR_TAIL = 1500
REPO_ROOT = Path(__file__).resolve().parent.parent


def config_hash(scenario_id: str, params: dict[str, Any]) -> str:
    """Identity of a measurement: the same scenario at the same parameters."""
    canonical = json.dumps({"scenario": scenario_id, "params": params}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def source_hash(cls: type[registry.Scenario]) -> str:
    """Hash of every source file in the scenario's family folder, so a change to the
    technique (not only to its glue) changes the hash."""
    module = sys.modules[cls.__module__]
    folder = Path(module.__file__ or "").parent
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class RunHeader:
    """What every record of one run shares."""

    run_id: str
    profile: str
    git: Git
    env: Environment
    budget: Budget

    def record(self, cls: type[registry.Scenario], params: dict[str, Any], status: Status,
               reason: str, duration_s: float, outcome: dict[str, Any] | None = None) -> Record:
        outcome = outcome or {}
        env = self.env
        if outcome.get("threads"):
            env = env.model_copy(update={"threads": {**env.threads, **outcome["threads"]}})
        return Record(
            run_id=self.run_id, time_utc=datetime.now(UTC).isoformat(timespec="seconds"),
            suite_version=suite.__version__, profile=self.profile, git=self.git, env=env,
            scenario=cls.id, params=params, config_hash=config_hash(cls.id, params),
            source_hash=source_hash(cls), status=status, reason=reason,
            duration_s=round(duration_s, 3), metrics=outcome.get("metrics", []),
            checks=outcome.get("checks", []), provenance=outcome.get("provenance", {}),
        )


def _thread_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return text[-STDERR_TAIL:]


def run_in_subprocess(header: RunHeader, cls: type[registry.Scenario], params: dict[str, Any],
                      timeout_s: float, artifacts: Path) -> Record:
    """One worker process in a session of its own, so a timeout kills its whole tree
    (torchrun ranks, servers) and not only the worker."""
    threads = header.budget.threads or (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mlsuite-job-") as tmp:
        job, result, log = Path(tmp, "job.json"), Path(tmp, "result.json"), Path(tmp, "log.txt")
        job.write_text(json.dumps({
            "scenario": cls.id, "params": params, "profile": header.profile,
            "budget": header.budget.model_dump(), "module": cls.__module__, "artifacts": str(artifacts),
        }))
        start = time.perf_counter()
        with log.open("w") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "suite.worker", str(job), str(result)],
                stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True,
                env=_thread_environment(threads), cwd=REPO_ROOT,
            )
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return header.record(cls, params, Status.error,
                                     f"timed out after {timeout_s:.0f}s; last output: {_tail(log)}",
                                     time.perf_counter() - start)
            except BaseException:
                _kill_group(process)
                raise
            finally:
                _kill_group(process)  # reap anything the scenario left running
        duration = time.perf_counter() - start
        if not result.exists():
            return header.record(cls, params, Status.error,
                                 f"worker exited with code {code} and no result: {_tail(log)}",
                                 duration)
        outcome = json.loads(result.read_text())
        return header.record(cls, params, Status(outcome["status"]), outcome["reason"],
                             duration, outcome)


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
    candidates = sorted(out_dir.glob(f"*-{machine_id[:8]}-*-{profile}.jsonl"))
    return candidates[-1] if candidates else None


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
    jobs = list(registry.select(pattern, profile, where))
    if not jobs:
        raise SuiteError(f"no scenario matching {pattern!r} with {where or {}} takes part in profile {profile!r}")
    env = fingerprint(budget.seed)
    header = RunHeader(run_id=uuid.uuid4().hex[:12], profile=profile, git=git_state(REPO_ROOT),
                       env=env, budget=budget)
    done: set[tuple[str, str]] = set()
    path = latest_results(out_dir, env.machine_id, profile) if resume else None
    if path is not None:
        existing = load_records(path)
        header.run_id = existing[0].run_id
        done = {r.key for r in existing}
    else:
        path = results_path(out_dir, header)
    for index, (cls, params) in enumerate(jobs, start=1):
        if (cls.id, config_hash(cls.id, params)) in done:
            continue
        if on_start:
            on_start(f"{cls.id} {params}", index, len(jobs))
        unmet = first_unmet(cls().requirements(params))
        if unmet is not None:
            record = header.record(cls, params, Status.skipped, unmet, 0.0)
        else:
            artifacts = out_dir / "artifacts" / header.run_id / cls.id / config_hash(cls.id, params)
            record = run_in_subprocess(header, cls, params, cls.timeout_s, artifacts)
        append_record(path, record)
        if on_record:
            on_record(record)
    return path
