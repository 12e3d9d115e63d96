"""Versioned result records: the contract between a run, `compare`, `gate` and `report`.

One JSON object per line (JSONL). The loader is strict: a file written by an older schema is
refused with a pointer at `mlsuite migrate`, a newer one with a pointer at upgrading, and a
corrupt line names its file and line number. Nothing is skipped with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suite.errors import SuiteError

SCHEMA_VERSION = 1


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
    kind: str = "steady"  # "steady" state, or "cold" (load, export, compile, first request)
    clock: str = "host"  # "host" (perf_counter) or "device" (CUDA events)
    overhead: float | None = None  # measured timer overhead per call, same unit
    calls_per_sample: int = 1  # >1: each sample is the mean of that many calls (percentiles not claimed)


class Check(Strict):
    name: str
    passed: bool
    observed: float | None = None
    tolerance: float | None = None
    reference: str = ""
    detail: str = ""


class Git(Strict):
    commit: str
    dirty: bool


class Environment(Strict):
    machine_id: str
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

    @property
    def key(self) -> tuple[str, str]:
        """What makes two records comparable: the same scenario at the same parameters."""
        return self.scenario, self.config_hash

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


def parse_record(line: str, where: str) -> Record:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{where}: not valid JSON ({exc.msg})") from None
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


def load_records(path: Path) -> list[Record]:
    """Every record of a JSONL results file, or a SuiteError naming the first bad line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read ({exc.strerror})") from None
    records = [
        parse_record(line, f"{path}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not records:
        raise SuiteError(f"{path}: holds no records")
    return records


def append_record(path: Path, record: Record) -> None:
    """Append one line and flush it to disk, so an interrupted run loses nothing written."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(record.model_dump_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_json_schema(path: Path) -> None:
    schema = Record.model_json_schema()
    schema["$comment"] = f"mlsuite results record, schema_version {SCHEMA_VERSION}"
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


# Upgrades of raw records, keyed by the version they upgrade from (asv's `update_to_N`).
# Version 1 is the first published schema, so there is nothing to upgrade yet.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate_file(path: Path) -> int:
    """Rewrite a results file at the current schema version (the original is kept as .bak);
    returns how many records the file holds now."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    upgraded = []
    for number, line in enumerate(lines, start=1):
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SuiteError(f"{path}:{number}: cannot migrate schema_version {version!r}")
        while version < SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise SuiteError(f"{path}:{number}: no migration from schema_version {version}")
            raw = MIGRATIONS[version](raw)
            version = raw["schema_version"]
        parse_record(json.dumps(raw), f"{path}:{number}")
        upgraded.append(json.dumps(raw))
    path.with_suffix(path.suffix + ".bak").write_text(path.read_text())
    path.write_text("\n".join(upgraded) + "\n")
    return len(upgraded)
