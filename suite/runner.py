"""Runs selected scenarios, each (scenario, params) as R process runs interleaved round
robin across the selection, and appends one record per (scenario, params) to a JSONL file
as soon as its last run is in.

The process run is the unit of replication: samples inside one process share its luck
(placement, frequency, neighbours), so R runs, spread over the whole session, give the
between-run spread that a single run hides. Each worker is pinned to the least busy CPUs
with as many threads, and records what the host was doing. A crash, a hang or an exception
becomes an `error` run and the session goes on; every finished run is kept in a side file,
so an interrupted session resumes without redoing it.

Nothing outlives a session, however it ends: workers die with the runner, a session holds
an exclusive lock on its results file (a second one on the same file is refused), a line
a crash cut off is moved aside, never dropped, and a retried `error` record is replaced
atomically with the old one kept (`<results>.replaced`).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import suite
from reference.lifeline import Lifeline
from suite import host, instructions, leftovers, registry, stats, zygote
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
    parse_record,
    read_text,
)
from suite.zygote import ForkedWorker, Zygote

STDERR_TAIL = 1500
POLL_S = 0.2  # how often a pool of workers is looked at
T = TypeVar("T")
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
    # Each configuration's native set-up before its first counted run (`set_up_natively`):
    # its step's native CPU seconds by configuration, so the later runs do not set up again.
    native_steps: dict[str, float | None] = field(default_factory=dict)
    # The session's counting zygote (suite.zygote), started by its first counted run and
    # stopped by `closing(header)` at the session's end.
    _zygote: Zygote | None = field(default=None, repr=False)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def counting_zygote(self) -> Zygote:
        """The zygote counted runs are forked from; a new one if the last one died."""
        if self._zygote is None or self._zygote.process.poll() is not None:
            env = instructions.worker_environment(_thread_environment(1, self.root))
            self._zygote = self._stack.enter_context(zygote.started(self.root, env))
        return self._zygote

    def close(self) -> None:
        """Stop what the session started for its workers (the zygote)."""
        self._zygote = None
        self._stack.close()

    def record(self, cls: type[registry.Scenario], params: dict[str, Any], status: Status,
               reason: str, duration_s: float, outcome: dict[str, Any] | None = None,
               runs: list[RunHost] | None = None) -> Record:
        outcome = outcome or {}
        env = self.env
        if outcome.get("threads"):
            env = env.model_copy(update={"threads": outcome["threads"]})  # the worker's own, not this process's
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


@functools.cache
def set_up_natively(root: Path, module: str, scenario: str, params_json: str, budget_json: str, profile: str,
                    timeout_s: float) -> float | None:
    """Before the first counted run of a configuration: its setup once, natively, so what a
    first run would leave behind (trained weights in optimize's cache) is there for every
    counted run and all do the same work (one that trained counts unlike one that loaded).
    Returns the CPU seconds of one warm call of its step, natively (None: no single step,
    or the setup failed, which the counted run then reports)."""
    with leftovers.job_folder() as tmp:
        job = Path(tmp, "job.json")
        job.write_text(json.dumps({
            "scenario": scenario, "params": json.loads(params_json), "profile": profile,
            # One CPU and one thread, as the counted run has: threads beyond the free cores
            # collapse (an MLP step timed 154 ms instead of 1.5 ms beside a counted worker).
            "budget": json.loads(budget_json), "module": module, "artifacts": None, "cpus": host.choose_cpus(1),
            "replicate": 0, "conformance": False, "runner_pid": os.getpid(), "setup_only": True,
        }))
        env = {key: value for key, value in _thread_environment(1, root).items() if key != instructions.MODE_ENV}
        result = Path(tmp, "result.json")
        try:
            subprocess.run([sys.executable, "-m", "suite.worker", str(job), str(result)],
                           cwd=root, env=env, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return None
        step_s = json.loads(result.read_text()).get("native_step_s") if result.exists() else None
        return float(step_s) if isinstance(step_s, int | float) else None


@dataclass(frozen=True)
class Worker:
    """A started worker: whether it has ended (or run out of time), and its outcome
    (status, reason, metrics, checks, provenance, host state, duration), waiting for it."""

    done: Callable[[], bool]
    outcome: Callable[[], dict[str, Any]]


def _skipped(reason: str, duration_s: float = 0.0) -> Worker:
    """A worker that never started: skipped, with the reason."""
    return Worker(lambda: True, lambda: {"status": Status.skipped.value, "reason": reason, "duration_s": duration_s})


@contextmanager
def started_worker(header: RunHeader, cls: type[registry.Scenario], params: dict[str, Any], *,
                   replicate: int, conformance: bool, artifacts: Path | None,
                   cpus: list[int] | None = None) -> Iterator[Worker]:
    """Start one worker process in a session of its own (so a timeout kills its whole tree:
    torchrun ranks, servers), pinned to `cpus` or the least busy CPUs. It dies with this
    process, however this process dies (a lifeline watcher for its group), or when the
    context is left, and what it left in the temp dir goes too."""
    counting = instructions.requested()  # `--count instructions`: under callgrind, one thread, no conformance
    if counting and (skip := instructions.unavailable() or cls().uncounted(params)
                     or instructions.not_countable(cls().requirements(params))):
        yield _skipped(skip)
        return
    conformance = conformance and not counting
    # Counted runs write no artifacts either: every run's job must be the same bytes, since
    # even the length of a path parsed before the region moves the heap, and with it counts.
    artifacts = None if counting else artifacts
    cpus = cpus or host.choose_cpus(1 if counting else cls.cpus or header.budget.threads)
    start = time.perf_counter()
    timeout_s = cls.timeout_s * (instructions.TIMEOUT_FACTOR if counting else 1)

    def failed(reason: str) -> dict[str, Any]:
        return {"status": Status.error.value, "reason": reason, "duration_s": time.perf_counter() - start}

    def not_started(reason: str) -> Worker:
        outcome = failed(reason)
        return Worker(lambda: True, lambda: outcome)

    if counting and (skip := instructions.too_long_natively(_native_step_s(header, cls, params))):
        yield _skipped(skip, time.perf_counter() - start)
        return
    try:
        parent = header.counting_zygote() if counting else None  # counted workers are forked by it
    except SuiteError as exc:
        yield not_started(str(exc))
        return
    with leftovers.job_folder() as tmp:
        job, result, log = Path(tmp, "job.json"), Path(tmp, "result.json"), Path(tmp, "log.txt")
        job.write_text(json.dumps({
            "scenario": cls.id, "params": params, "profile": header.profile,
            "budget": header.budget.model_dump(), "module": cls.__module__,
            "artifacts": str(artifacts) if artifacts else None, "cpus": cpus,
            "replicate": replicate, "conformance": conformance,
            "runner_pid": None if parent else os.getpid(),  # a forked worker is tied to its parent on its own
        }))
        lifeline = Lifeline()
        process: subprocess.Popen[bytes] | ForkedWorker
        try:
            if parent is not None:
                process = parent.fork(job, result, log)
                lifeline.watch(process.pid)  # its own session: the zygote's group does not hold it
            else:
                with log.open("w") as log_handle:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "suite.worker", str(job), str(result)], stdout=log_handle,
                        stderr=subprocess.STDOUT, start_new_session=True, cwd=header.root,
                        env=_thread_environment(len(cpus), header.root), preexec_fn=lifeline.announce)
        except SuiteError as exc:
            lifeline.cut()
            yield not_started(str(exc))
            return

        def outcome() -> dict[str, Any]:
            try:
                code = process.wait(timeout=max(0.0, start + timeout_s - time.perf_counter()))
            except subprocess.TimeoutExpired:
                return failed(f"timed out after {cls.timeout_s:.0f}s; last output: {_tail(log)}")
            finally:
                _kill_group(process)  # reap anything the scenario left running
            if not result.exists():
                return failed(f"worker exited with code {code} and no result: {_tail(log)}")
            found = json.loads(result.read_text())
            if parent is not None:
                instructions.take_dumps(parent.folder, process.pid, Path(tmp))
                found = instructions.counted_outcome(found, Path(tmp))
            found["duration_s"] = time.perf_counter() - start
            return found

        def done() -> bool:
            return process.poll() is not None or time.perf_counter() > start + timeout_s

        try:
            yield Worker(done, outcome)
        finally:
            _kill_group(process)
            lifeline.cut()


def _native_step_s(header: RunHeader, cls: type[registry.Scenario], params: dict[str, Any]) -> float | None:
    """The configuration's native set-up, once per session (`set_up_natively`), and the
    native CPU seconds of its step."""
    instructions.compile_sources(header.root, cls.__module__)
    config = config_hash(cls.id, params)
    if config not in header.native_steps:
        header.native_steps[config] = set_up_natively(
            header.root, cls.__module__, cls.id, json.dumps(params, sort_keys=True),
            header.budget.model_dump_json(), header.profile, cls.timeout_s)
    return header.native_steps[config]


def worker_places() -> list[list[int] | None]:
    """Where the workers that run at once go. Timed runs take turns (one would time the
    others): one worker, placed by `started_worker`. Counted runs need not, since a count
    does not move with load: one per CPU this process may use, within the cgroup quota."""
    if not instructions.requested():
        return [None]
    quota = host.cgroup_cpus()
    allowed = len(host.affinity())
    return [[cpu] for cpu in host.choose_cpus(max(1, min(allowed, math.floor(quota)) if quota else allowed))]


def run_pooled(pick: Callable[[list[T]], T | None],
               start: Callable[[T, list[int] | None], AbstractContextManager[Worker]],
               finish: Callable[[T, dict[str, Any]], None], places: Sequence[list[int] | None]) -> None:
    """Keep every place busy: whenever one is free, start `pick(running tasks)` there (None:
    nothing to start now), and hand each outcome to `finish` as it comes in. Leaving early
    (Ctrl-C, an exception) stops every worker still running."""
    running: list[tuple[T, int, ExitStack, Worker]] = []
    try:
        while True:
            while len(running) < len(places) and (task := pick([entry[0] for entry in running])) is not None:
                slot = min(set(range(len(places))) - {entry[1] for entry in running})
                stack = ExitStack()
                running.append((task, slot, stack, stack.enter_context(start(task, places[slot]))))
            if not running:
                return
            # One place (timed runs): wait on it, so the runner stays asleep while a run is timed.
            ended = [entry for entry in running if len(places) == 1 or entry[3].done()]
            if not ended:
                time.sleep(POLL_S)
            for entry in ended:
                running.remove(entry)
                with entry[2]:
                    outcome = entry[3].outcome()
                finish(entry[0], outcome)
    finally:
        for entry in running:
            entry[2].close()


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


def _kill_group(process: subprocess.Popen[bytes] | ForkedWorker) -> None:
    """Kill the worker's group, and the worker itself while it runs: a forked worker makes
    its own group only once it runs, so right after its fork there is none yet."""
    kills = (os.killpg, os.kill) if process.poll() is None else (os.killpg,)
    for kill in kills:
        try:
            kill(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


def results_path(out_dir: Path, header: RunHeader) -> Path:
    """A new file's name: a session that started in the same second gets the next one."""
    now = datetime.now(UTC)
    for later in range(3600):
        stamp = (now + timedelta(seconds=later)).strftime("%Y%m%dT%H%M%S")
        path = out_dir / f"{stamp}-{header.env.machine_id[:8]}-{header.git.commit[:8]}-{header.profile}.jsonl"
        if not any(p.exists() for p in (path, runs_path(path), path.with_suffix(".lock"))):
            return path
    raise SuiteError(f"{out_dir}: no free results file name for this second or the hour after it")


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


def next_run(jobs: list[Job], running: list[Job], side_by_side: bool = False) -> Job | None:
    """The job whose next run starts now, round robin: run r of every job before run r+1
    of any (slow drift of the host spreads over all), one run of a job at a time, or, with
    `side_by_side` (counted runs: a count does not move with load), more once its first
    run is in (a first run that broke or was skipped ends the job)."""
    def begun(job: Job) -> int:
        return len(job.outcomes) + sum(job is other for other in running)

    pending = [job for job in jobs if not job.finished and begun(job) < job.replicates
               and (begun(job) == len(job.outcomes) or (side_by_side and job.outcomes))]
    return min(pending, key=begun, default=None)


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


def _run_line(key: tuple[str, str], outcome: dict[str, Any]) -> str:
    """One kept run as a line of the side file (what `_load_runs` reads back)."""
    return json.dumps({"scenario": key[0], "config_hash": key[1], "outcome": outcome}, default=str) + "\n"


def _keep_run(path: Path, job: Job, outcome: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(_run_line(job.key, outcome))
        handle.flush()
        os.fsync(handle.fileno())


def session(header: RunHeader, jobs: list[Job], path: Path, out_dir: Path, *,
            on_start: Callable[[str, int, int], None] | None = None,
            on_record: Callable[[Record], None] | None = None,
            replacing: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Run every job's runs round robin; write each record when its last run is in. The
    record of a job in `replacing` (an `error` being retried) takes the old one's place."""
    side = runs_path(path)
    side.parent.mkdir(parents=True, exist_ok=True)
    kept = _load_runs(side)
    for job in jobs:  # a retried job's kept runs are the ones that made its error: start afresh
        job.outcomes = [] if job.key in replacing else kept.get(job.key, [])[: job.replicates]
    total = sum(job.replicates for job in jobs)
    started = sum(len(job.outcomes) for job in jobs)
    for job in jobs:
        unmet = first_unmet(job.cls().requirements(job.params))
        if unmet is not None:
            job.outcomes = [{"status": Status.skipped.value, "reason": unmet, "duration_s": 0.0}]
        if job.finished:  # skipped, or every run kept but killed before its record was written
            _finish(header, job, path, on_record, replacing)

    begun = {job.key: len(job.outcomes) for job in jobs}  # runs started, kept ones included

    def pick(running: list[Job]) -> Job | None:
        nonlocal started
        job = next_run(jobs, running, side_by_side=instructions.requested())
        if job is not None:
            started += 1
            if on_start:
                on_start(f"{job.label} run {begun[job.key] + 1}/{job.replicates}", started, total)
        return job

    def start(job: Job, cpus: list[int] | None) -> AbstractContextManager[Worker]:
        replicate = begun[job.key]
        begun[job.key] += 1
        artifacts = None if replicate else out_dir / "artifacts" / header.run_id / job.cls.id / job.key[1]
        return started_worker(header, job.cls, job.params, replicate=replicate, conformance=not replicate,
                              artifacts=artifacts, cpus=cpus)

    def finish(job: Job, outcome: dict[str, Any]) -> None:
        job.outcomes.append(outcome)
        _keep_run(side, job, outcome)
        if job.finished:
            _finish(header, job, path, on_record, replacing)

    with closing(header):
        run_pooled(pick, start, finish, worker_places())
    _forget_runs(side, {job.key for job in jobs})


def _forget_runs(side: Path, done: set[tuple[str, str]]) -> None:
    """Drop the kept runs of the jobs whose records are written; runs of jobs outside this
    session's selection (a `--resume --only` narrower than the interrupted run) stay."""
    others = {key: runs for key, runs in _load_runs(side).items() if key not in done}
    if not others:
        side.unlink(missing_ok=True)
        return
    partial = side.with_suffix(".runs.tmp")
    partial.write_text("".join(_run_line(key, outcome) for key, runs in others.items() for outcome in runs))
    partial.replace(side)


def _finish(header: RunHeader, job: Job, path: Path, on_record: Callable[[Record], None] | None,
            replacing: frozenset[tuple[str, str]] = frozenset()) -> None:
    status, reason, merged, runs = merge_runs(job.outcomes)
    duration = sum(o["duration_s"] for o in job.outcomes)
    record = header.record(job.cls, job.params, status, reason, duration, merged, runs)
    if job.key in replacing:
        replace_errors(path, record)
    else:
        append_record(path, record)
    if on_record:
        on_record(record)


def _fsynced_append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replaced_path(results: Path) -> Path:
    """Where records that a retry replaced are kept (never read as results)."""
    return results.with_suffix(".replaced")


def replace_errors(path: Path, record: Record) -> None:
    """Put `record` in the place of the `error` record(s) of its key. The old lines go to
    `<results>.replaced` first, then the file is replaced atomically (temp file, fsync,
    rename): a crash at any point leaves either the old file or the new one, never less."""
    lines = read_text(path).splitlines()

    def is_old(line: str) -> bool:
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            return False
        return isinstance(raw, dict) and raw.get("status") == Status.error.value and (
            raw.get("scenario"), raw.get("config_hash")) == record.key

    old = [line for line in lines if is_old(line)]
    if not old:
        append_record(path, record)
        return
    _fsynced_append(replaced_path(path), "".join(f"{line}\n" for line in old).encode())
    new, placed = [], False
    for line in lines:
        if not is_old(line):
            new.append(line)
        elif not placed:
            new.append(record.model_dump_json())
            placed = True
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in new))
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def recover_cut_line(path: Path, whole: Callable[[bytes], bool]) -> bytes | None:
    """A last line a crash cut off (the file does not end in a newline) is moved to
    `<file>.partial`, and the file cut back to its last complete line, so that the next
    append starts on a line of its own. A last line that is whole (only its newline was
    lost) stays. Returns the bytes moved, if any."""
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if whole(tail):
        _fsynced_append(path, b"\n")
        return None
    _fsynced_append(path.with_name(path.name + ".partial"), tail + b"\n")
    with path.open("r+b") as handle:
        handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())
    return tail


def _whole_record(line: bytes) -> bool:
    try:
        parse_record(line.decode("utf-8"), "cut line")
    except (SuiteError, UnicodeDecodeError):
        return False
    return True


def _whole_run(line: bytes) -> bool:
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(entry, dict) and {"scenario", "config_hash", "outcome"} <= entry.keys()


LOCK_GRACE_S = 2.0  # how long a session waits for a lock before refusing (covers a stale lock's removal)


def _take_lock(lock: Path) -> TextIO | None:
    """The lock file, opened and flock-ed by this process, or None if another holds it."""
    while True:
        handle = lock.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        try:
            if os.fstat(handle.fileno()).st_ino == lock.stat().st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # its holder removed it while we opened it: lock the one there now


@contextmanager
def exclusive(results: Path) -> Iterator[None]:
    """Hold `<results>.lock` (flock) for a whole session: a second session on the same
    file (two `--resume`s at once, say) is refused with one line instead of writing the
    same records twice. The kernel drops the lock when its holder dies, however it dies."""
    lock = results.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_GRACE_S
    while (handle := _take_lock(lock)) is None:
        if time.monotonic() > deadline:
            holder = lock.read_text(errors="replace").strip() if lock.exists() else ""
            raise SuiteError(f"{results} is being written by another mlsuite run (pid {holder or 'unknown'}); "
                             f"wait for it to end, or pass another --out")
        time.sleep(0.1)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def remove_stale_locks(out_dir: Path, machine_id: str) -> None:
    """Lock files of sessions that were killed (nobody holds them) are removed."""
    for lock in out_dir.glob(f"*-{machine_id[:8]}-*.lock"):
        handle = _take_lock(lock)
        if handle is not None:
            lock.unlink(missing_ok=True)
            handle.close()


def _existing_records(path: Path, on_warning: Callable[[str], None] | None) -> list[Record]:
    """The records a resumed file holds, after moving a line cut by a crash aside."""
    for file, whole in ((path, _whole_record), (runs_path(path), _whole_run)):
        cut = recover_cut_line(file, whole)
        if cut is not None and on_warning:
            on_warning(f"{file}: its last line was cut off by a crash; moved to "
                       f"{file.name}.partial ({len(cut)} bytes); that work is redone")
    if not path.exists() or not read_text(path).strip():
        return []
    return load_records(path)


def run(pattern: str, profile: str, budget: Budget, out_dir: Path, *, where: dict[str, str] | None = None,
        resume: bool = False, retry_errors: bool = False,
        packages: tuple[str, ...] = registry.DEFAULT_PACKAGES,
        on_start: Callable[[str, int, int], None] | None = None,
        on_record: Callable[[Record], None] | None = None,
        on_warning: Callable[[str], None] | None = None) -> Path:
    """Run every selected (scenario, params); returns the results file written. With
    `resume`, continue the newest results file of this machine and profile (with
    `retry_errors`, its `error` records are run again and replaced)."""
    if retry_errors and not resume:
        raise SuiteError("--retry-errors re-runs the error records of an earlier run: use it with --resume")
    for module, error in registry.discover(packages).items():
        if on_warning:
            on_warning(f"scenario module {module} failed to import: {error}")
    selected = list(registry.select(pattern, profile, where))
    if not selected:
        raise SuiteError(f"no scenario matching {pattern!r} with {where or {}} takes part in profile {profile!r}")
    swept = leftovers.sweep()
    if swept and on_warning:
        on_warning(f"removed {len(swept)} temporary path(s) left by a killed run: "
                   f"{', '.join(map(str, swept[:3]))}{' ...' if len(swept) > 3 else ''}")
    env = fingerprint(budget.seed)
    header = RunHeader(run_id=uuid.uuid4().hex[:12], profile=profile, git=git_state(REPO_ROOT),
                       env=env, budget=budget)
    remove_stale_locks(out_dir, env.machine_id)
    path = (latest_results(out_dir, env.machine_id, profile) if resume else None) or results_path(out_dir, header)
    with exclusive(path):
        existing = _existing_records(path, on_warning)
        if existing:
            header.run_id = existing[0].run_id
        retried = frozenset(r.key for r in existing if r.status is Status.error) if retry_errors else frozenset()
        done = {r.key for r in existing} - retried
        jobs = [job for job in plan(selected, budget) if job.key not in done]
        session(header, jobs, path, out_dir, on_start=on_start, on_record=on_record, replacing=retried)
    return path
