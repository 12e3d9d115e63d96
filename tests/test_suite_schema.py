"""Versioned records: round trip, strict loading, the frozen example, the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from suite.errors import SuiteError
from suite.schema import SCHEMA_VERSION, Record, append_record, load_records, migrate_file, write_json_schema
from tests.factories import record

FROZEN = Path(__file__).parent / "data" / "results-v1.jsonl"
FROZEN_V2 = Path(__file__).parent / "data" / "results-v2.jsonl"


def test_frozen_v1_example_is_refused_then_migrates(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="schema_version 1 is older .*mlsuite migrate"):
        load_records(FROZEN)
    copy = tmp_path / "v1.jsonl"
    copy.write_text(FROZEN.read_text())
    assert migrate_file(copy) == (3, True)
    records = load_records(copy)
    assert [r.scenario for r in records] == ["training.accumulation", "training.accumulation", "training.amp"]
    assert all(r.env.host_id == "0035969ec53f6e7f" and r.env.machine_id != r.env.host_id for r in records)
    assert records[2].metric("eval_accuracy").kind == "exact"  # type: ignore[union-attr]
    assert all(m.run_values == [m.value] for r in records for m in r.metrics)


def test_frozen_v2_example_keeps_loading() -> None:
    records = load_records(FROZEN_V2)
    assert records and all(r.schema_version == 2 and r.runs for r in records)
    assert any(m.replicated for r in records for m in r.metrics)


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


def test_migrate_leaves_a_current_file_untouched(tmp_path: Path) -> None:
    path = rewrite(tmp_path)
    before = path.read_bytes()
    assert migrate_file(path) == (1, False)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.bak*"))


def test_migrate_never_overwrites_a_backup_and_refuses_unknown_versions(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(FROZEN.read_text())
    (tmp_path / "old.jsonl.bak").write_text("an earlier backup\n")
    assert migrate_file(path) == (3, True)
    assert (tmp_path / "old.jsonl.bak").read_text() == "an earlier backup\n"
    assert (tmp_path / "old.jsonl.bak.1").read_text() == FROZEN.read_text()
    with pytest.raises(SuiteError, match="no migration from schema_version 0"):
        migrate_file(rewrite(tmp_path, schema_version=0))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SuiteError, match="holds no records"):
        migrate_file(tmp_path / "empty.jsonl")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "binary data"),
    (b"\xff\xfe{not utf8", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
])
def test_unreadable_files_are_named_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(SuiteError, match=fragment):
        load_records(path)
    with pytest.raises(SuiteError, match="is a folder"):
        load_records(tmp_path)


def test_json_schema_is_written(tmp_path: Path) -> None:
    write_json_schema(tmp_path / "schema.json")
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert schema["title"] == Record.__name__ and "metrics" in schema["properties"]
