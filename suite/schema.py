"""Versioned result records: the contract between a run, `compare`, `gate` and `report`.

One JSON object per line (JSONL). The loader is strict: a file written by an older schema is
refused with a pointer at `mlsuite migrate`, a newer one with a pointer at upgrading, and a
corrupt line names its file and line number. Nothing is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from suite.errors import SuiteError

SCHEMA_VERSION = 2


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Status(StrEnum):
    ok = "ok"
    failed = "failed"  # ran, but a conformance check did not pass
    skipped = "skipped"  # a requirement is not met on this machine: not applicable here
    error = "error"  # broken: raised, crashed, timed out


class Percentile(Strict):
    q: float
    value: float
    claimed: bool  # False when n is below the sample-size floor for this percentile
    min_samples: int


class Metric(Strict):
    name: str
    unit: str
    higher_is_better: bool
    samples: list[float] = Field(default_factory=list)
    n: int
    value: float  # the headline estimate: the median for times, items/total time for rates
    median: float  # median of the raw samples
    ci_low: float
    ci_high: float
    percentiles: list[Percentile] = Field(default_factory=list)
    # "steady" state; "cold" (load, export, compile, first request); "exact": deterministic
    # for a fixed seed (accuracy on a pinned eval set), so a change is judged by threshold alone.
    kind: str = "steady"
    clock: str = "host"  # "host" (perf_counter), "device" (CUDA events) or "callgrind" (counts)
    overhead: float | None = None  # measured timer overhead per call, same unit
    calls_per_sample: int = 1  # >1: each sample is the mean of that many calls (percentiles not claimed)
    # How `value` comes from samples: "median"; "rate" (items over total time: the harmonic
    # mean of per-call rates); "mean" (a proportion); "single" (one observation per run).
    estimator: str = "median"
    # Replicated runs (the process run is the unit of replication): samples holds every
    # run's samples in order, run_sizes how many each run gave, run_values each run's own
    # estimate; value is the median of run_values and the CI a hierarchical bootstrap
    # (runs, then samples within runs). One run: run_sizes == [n].
    run_sizes: list[int] = Field(default_factory=list)
    run_values: list[float] = Field(default_factory=list)
    between_run_cv: float | None = None  # std / |mean| of run_values: the spread between runs

    @property
    def moves_with_load(self) -> bool:
        """Whether an oversubscribed host can move it: times can; a count of executed
        instructions cannot, so a counted run under load is still evidence."""
        return self.clock != "callgrind"

    @property
    def replicated(self) -> bool:
        return len(self.run_values) >= 2


class Check(Strict):
    name: str
    passed: bool
    # Neither shown to hold nor shown to fail: the noise left the bound inside the CI; the
    # detail says how much more measurement would settle it. Never passed.
    inconclusive: bool = False
    observed: float | None = None
    tolerance: float | None = None
    reference: str = ""
    detail: str = ""

    @model_validator(mode="after")
    def _inconclusive_is_not_passed(self) -> Check:
        if self.passed and self.inconclusive:
            raise ValueError(f"check {self.name} cannot be both passed and inconclusive")
        return self

    @property
    def failed(self) -> bool:
        """Shown not to hold."""
        return not self.passed and not self.inconclusive

    @property
    def outcome(self) -> str:
        return "pass" if self.passed else "inconclusive" if self.inconclusive else "FAIL"


class Git(Strict):
    commit: str
    dirty: bool


class Environment(Strict):
    machine_id: str  # derived from what makes numbers comparable: CPU, cores, memory, GPU, limits
    host_id: str | None = None  # this host's own id (/etc/machine-id hash): which box, not which kind
    cgroup_cpus: float | None = None  # CPU quota of the cgroup, in cores (None: unlimited)
    hostname: str
    cpu_model: str
    cpu_cores: int
    ram_bytes: int
    gpu_name: str | None = None
    gpu_driver: str | None = None
    cuda: str | None = None
    python: str
    platform: str
    packages: dict[str, str]
    threads: dict[str, Any]
    seed: int


class RunHost(Strict):
    """What the host was doing during one worker run: the evidence a reader needs to trust
    or discount its numbers."""

    index: int
    status: Status
    duration_s: float
    threads: int  # intra-op threads the worker used
    cpus: list[int]  # the CPU set the worker was pinned to
    load_before: list[float]  # 1, 5, 15 minute load averages
    load_after: list[float]
    cgroup_cpus: float | None = None
    steal_fraction: float | None = None  # of the host's CPU time during the run
    governor: str | None = None
    runqueue_wait_fraction: float | None = None  # time the worker's threads waited for a CPU / wall
    cpu_per_wall: float | None = None  # process CPU time / wall time of the measured part
    oversubscribed: bool = False


class Record(Strict):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    time_utc: str
    suite_version: str
    profile: str
    git: Git
    env: Environment
    scenario: str
    params: dict[str, Any]
    config_hash: str
    source_hash: str
    status: Status
    reason: str = ""
    duration_s: float
    metrics: list[Metric] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    runs: list[RunHost] = Field(default_factory=list)

    @property
    def oversubscribed(self) -> bool:
        """Measured while the host was oversubscribed: never evidence of a regression."""
        return any(run.oversubscribed for run in self.runs)

    @property
    def key(self) -> tuple[str, str]:
        """What makes two records comparable: the same scenario at the same parameters."""
        return self.scenario, self.config_hash

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


def config_hash(scenario_id: str, params: dict[str, Any]) -> str:
    """Identity of a measurement: the same scenario at the same parameters."""
    canonical = json.dumps({"scenario": scenario_id, "params": params}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def comparable_machine_id(cpu_model: str, cpu_cores: int, ram_bytes: int, gpu_name: str | None,
                          cgroup_cpus: float | None) -> str:
    """What makes two hosts' numbers comparable, hashed: two containers on one box share
    /etc/machine-id and still differ here when their limits differ, and two boxes of the
    same kind agree. Memory is rounded to GiB (firmware reserves vary by a few MiB)."""
    identity = json.dumps([cpu_model, cpu_cores, round(ram_bytes / 2**30), gpu_name, cgroup_cpus])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _decode_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise SuiteError(f"{where}: JSON nested too deeply") from None


def parse_record(line: str, where: str) -> Record:
    raw = _decode_json(line, where)
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a record must be a JSON object")
    version = raw.get("schema_version")
    if not isinstance(version, int):
        raise SuiteError(f"{where}: no integer schema_version; not an mlsuite results file")
    if version < SCHEMA_VERSION:
        raise SuiteError(
            f"{where}: schema_version {version} is older than {SCHEMA_VERSION}; "
            f"run `mlsuite migrate` on it first"
        )
    if version > SCHEMA_VERSION:
        raise SuiteError(
            f"{where}: schema_version {version} is newer than this mlsuite understands "
            f"({SCHEMA_VERSION}); upgrade mlsuite"
        )
    try:
        return Record.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SuiteError(f"{where}: invalid record: {field}: {first['msg']}") from None


def read_text(path: Path) -> str:
    """A results or config file's text, or a SuiteError naming it: a folder, a binary
    file or a bad encoding is bad input, not a traceback."""
    if path.is_dir():
        raise SuiteError(f"{path}: is a folder, expected a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read ({exc.strerror})") from None
    if b"\0" in data:
        raise SuiteError(f"{path}: binary data, not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_records(path: Path) -> list[Record]:
    """Every record of a JSONL results file, or a SuiteError naming the first bad line."""
    records = [
        parse_record(line, f"{path}:{number}")
        for number, line in enumerate(read_text(path).splitlines(), start=1)
        if line.strip()
    ]
    if not records:
        raise SuiteError(f"{path}: holds no records")
    return records


def load_many(paths: list[Path]) -> list[Record]:
    """Records of every file named, and of every .jsonl file under every folder named."""
    records: list[Record] = []
    for path in paths:
        if path.is_dir():
            files = sorted(path.rglob("*.jsonl"))
            if not files:
                raise SuiteError(f"{path}: no .jsonl results files in it")
            for file in files:
                records += load_records(file)
        else:
            records += load_records(path)
    return records


def append_record(path: Path, record: Record) -> None:
    """Append one line and flush it to disk, so an interrupted run loses nothing written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(record.model_dump_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_json_schema(path: Path) -> None:
    schema = Record.model_json_schema()
    schema["$comment"] = f"mlsuite results record, schema_version {SCHEMA_VERSION}"
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


# Scenario ids before version 2 used short family prefixes; since then they name their folder.
_RENAMED_PREFIXES = {"train": "training", "dist": "distributed", "tune": "tuning", "opt": "optimize",
                     "serve": "serving", "track": "tracking", "monitor": "monitoring"}


def _renamed(name: str) -> str:
    family, dot, rest = name.partition(".")
    return f"{_RENAMED_PREFIXES.get(family, family)}{dot}{rest}"


def _estimator_of(metric: dict[str, Any]) -> str:
    if metric["n"] == 1:
        return "single"
    if not metric["samples"] and metric["unit"] == "fraction":
        return "mean"
    if metric["samples"] and metric["value"] != metric["median"]:
        return "rate"
    return "median"


def update_to_2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2: ids named after their folders (config hash follows), a comparable machine
    id (the old one is kept as host_id), per-run fields on metrics, host state per run."""
    env = raw["env"]
    env["host_id"] = env["machine_id"]
    env["machine_id"] = comparable_machine_id(env["cpu_model"], env["cpu_cores"], env["ram_bytes"],
                                              env.get("gpu_name"), None)
    raw["scenario"] = _renamed(raw["scenario"])
    raw["config_hash"] = config_hash(raw["scenario"], raw["params"])
    for check in raw.get("checks", []):
        check["name"] = _renamed(check["name"]) if check["name"].startswith("serve.") else check["name"]
    for metric in raw.get("metrics", []):
        metric["estimator"] = _estimator_of(metric)
        if metric["estimator"] == "mean":
            metric["kind"] = "exact"  # a proportion over a pinned eval set
        metric["run_sizes"] = [len(metric["samples"])] if metric["samples"] else []
        metric["run_values"] = [metric["value"]]
    raw["runs"] = []
    raw["schema_version"] = 2
    return raw


# Upgrades of raw records, keyed by the version they upgrade from (asv's `update_to_N`).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: update_to_2}


def _free_backup_name(path: Path) -> Path:
    """`<file>.bak`, or `.bak.1`, `.bak.2`…: a second migration never overwrites the first
    backup, which may be the only copy of the original."""
    candidate, number = path.with_suffix(path.suffix + ".bak"), 0
    while candidate.exists():
        number += 1
        candidate = path.with_suffix(f"{path.suffix}.bak.{number}")
    return candidate


def migrate_file(path: Path) -> tuple[int, bool]:
    """Upgrade a results file to the current schema: (records it holds, whether it was
    rewritten). A current file is left untouched; otherwise the original is kept as a new
    backup and the upgrade replaces the file atomically."""
    text = read_text(path)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise SuiteError(f"{path}: holds no records")
    upgraded, changed = [], False
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        raw = _decode_json(line, where)
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SuiteError(f"{where}: cannot migrate schema_version {version!r}")
        while version < SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise SuiteError(f"{where}: no migration from schema_version {version}")
            raw, changed = MIGRATIONS[version](raw), True
            version = raw["schema_version"]
        parse_record(json.dumps(raw), where)
        upgraded.append(json.dumps(raw))
    if changed:
        _free_backup_name(path).write_text(text)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("\n".join(upgraded) + "\n")
        os.replace(tmp, path)
    return len(upgraded), changed
