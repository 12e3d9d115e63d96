"""Versioned records: round trip, strict loading, the frozen example, the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from suite.errors import SuiteError
from suite.schema import SCHEMA_VERSION, Record, append_record, load_records, migrate_file, write_json_schema
from tests.factories import record

FROZEN = Path(__file__).parent / "data" / "results-v1.jsonl"


def test_frozen_v1_example_keeps_loading() -> None:
    records = load_records(FROZEN)
    assert len(records) == 3
    assert all(r.schema_version == 1 and r.metrics for r in records)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    original = record([0.1, 0.2, 0.3])
    append_record(path, original)
    append_record(path, original)
    assert load_records(path) == [original, original]


def rewrite(tmp_path: Path, **changes: object) -> Path:
    raw = json.loads(record([0.1, 0.2]).model_dump_json())
    raw.update(changes)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(raw) + "\n")
    return path


def test_older_schema_points_at_migrate(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"r.jsonl:1: schema_version 0 is older .*mlsuite migrate"):
        load_records(rewrite(tmp_path, schema_version=0))


def test_newer_schema_asks_for_an_upgrade(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="newer than this mlsuite understands"):
        load_records(rewrite(tmp_path, schema_version=SCHEMA_VERSION + 1))


def test_corrupt_line_is_named(tmp_path: Path) -> None:
    path = rewrite(tmp_path)
    path.write_text(path.read_text() + '{"schema_version": 1, "run_id": \n')
    with pytest.raises(SuiteError, match=r"r.jsonl:2: not valid JSON"):
        load_records(path)


def test_invalid_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"invalid record: status"):
        load_records(rewrite(tmp_path, status="sort-of"))


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"invalid record: surprise"):
        load_records(rewrite(tmp_path, surprise=1))


def test_empty_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SuiteError, match="holds no records"):
        load_records(tmp_path / "empty.jsonl")
    with pytest.raises(SuiteError, match="cannot read"):
        load_records(tmp_path / "absent.jsonl")


def test_migrate_rewrites_current_files_and_refuses_unknown_versions(tmp_path: Path) -> None:
    path = rewrite(tmp_path)
    assert migrate_file(path) == 1
    assert (tmp_path / "r.jsonl.bak").exists()
    assert load_records(path)[0].schema_version == SCHEMA_VERSION
    with pytest.raises(SuiteError, match="no migration from schema_version 0"):
        migrate_file(rewrite(tmp_path, schema_version=0))


def test_json_schema_is_written(tmp_path: Path) -> None:
    write_json_schema(tmp_path / "schema.json")
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert schema["title"] == Record.__name__ and "metrics" in schema["properties"]
