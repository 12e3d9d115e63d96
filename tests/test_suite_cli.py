"""The CLI: every command works, and bad input ends in one line, exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from suite.cli import main
from suite.schema import append_record
from tests.factories import record, runs_of, timings

FROZEN = Path(__file__).parent / "data" / "results-v2.jsonl"
FROZEN_V1 = Path(__file__).parent / "data" / "results-v1.jsonl"


def mlsuite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suite", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)


def one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("mlsuite: error:") and fragment in result.stderr


def test_list_shows_registered_scenarios_as_json() -> None:
    result = mlsuite("list", "--json", "--profile", "quick")
    assert result.returncode == 0
    listing = {item["id"]: item for item in json.loads(result.stdout)}
    assert listing["training.amp"]["grid"]["device"] == ["cpu"]
    assert "quick" in listing["training.baseline"]["profiles"]


@pytest.mark.parametrize(("args", "fragment"), [
    (("run", "--profile", "turbo"), "invalid choice"),
    (("frobnicate",), "invalid choice"),
    (("run", "--only", "nothing.*"), "matches no scenario"),
    (("gate", "--baseline", "a"), "required"),
    (("list", "--profile", "bogus"), "invalid choice"),
    (("run", "--only", "training.*", "--where", "modle=mlp"), "--where modle: no selected scenario has that parameter"),
    (("ab", "HEAD", "no-such-rev-xyz", "--only", "training.baseline"), "is not a commit"),
    (("ab", "HEAD", "HEAD", "--rounds", "1", "--only", "training.baseline"), "--rounds must be at least 2"),
    (("ab", "HEAD", "HEAD", "--rounds", "0", "--only", "training.baseline"), "--rounds must be at least 2"),
    (("ab", "HEAD", "HEAD", "--rounds", "1", "--count", "instructions", "--only", "training.baseline",
      "--calibration", "no-such-folder"), "calibrated count floors"),
    (("run", "--only", "training.baseline", "--replicates", "0"), "--replicates must be at least 1"),
])
def test_bad_arguments(args: tuple[str, ...], fragment: str) -> None:
    one_line_error(mlsuite(*args), fragment)


def test_malformed_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[profiles.quick\nwarmup_calls = 3")
    one_line_error(mlsuite("run", "--config", str(config)), "malformed TOML")
    config.write_text("[profiles.quick]\nwarmup_calls = -3\n")
    one_line_error(mlsuite("run", "--config", str(config)), "profiles.quick.warmup_calls")
    config.write_text("[profiles.quick]\nwarmup_cals = 3\n")
    one_line_error(mlsuite("run", "--config", str(config)), "warmup_cals")


def test_corrupt_results_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(FROZEN.read_text()[:500])
    one_line_error(mlsuite("compare", str(FROZEN), str(corrupt)), "corrupt.jsonl:1: not valid JSON")
    one_line_error(mlsuite("report", "--results", str(tmp_path)), "corrupt.jsonl:1")


@pytest.mark.parametrize(("content", "fragment"), [(b"\x00\x01binary", "binary data"), (b"\xff\xfe", "not UTF-8")])
def test_unreadable_files_are_one_line_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    one_line_error(mlsuite("gate", "--baseline", str(FROZEN), "--current", str(bad)), fragment)
    one_line_error(mlsuite("migrate", str(bad)), fragment)
    one_line_error(mlsuite("migrate", str(tmp_path)), "is a folder")
    one_line_error(mlsuite("run", "--config", str(bad)), fragment)


def test_list_into_a_closed_pipe_is_quiet() -> None:
    result = subprocess.run(f"{sys.executable} -m suite list | head -1", shell=True, capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).parent.parent)
    assert result.stdout.count("\n") == 1 and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_the_committed_style_file_gated_against_itself_passes(tmp_path: Path) -> None:
    assert main(["gate", "--baseline", str(FROZEN), "--current", str(FROZEN)]) == 0


def test_compare_prints_a_table(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_record(a, record(runs_of(0.01, 1)))
    append_record(b, record(runs_of(0.01, 2)))
    result = mlsuite("compare", str(a), str(b))
    assert result.returncode == 0 and "step_time" in result.stdout and "pass" in result.stdout


def test_gate_exit_status_follows_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, same, slow, noisy = (tmp_path / f"{name}.jsonl" for name in ("base", "same", "slow", "noisy"))
    append_record(base, record(runs_of(0.01, 1)))
    append_record(same, record(runs_of(0.01, 2)))
    append_record(slow, record(runs_of(0.012, 3)))
    append_record(noisy, record(timings(0.01, 4)))  # one run: its noise is unknown
    assert main(["gate", "--baseline", str(base), "--current", str(same)]) == 0
    assert main(["gate", "--baseline", str(base), "--current", str(slow)]) == 1
    assert "GATE FAIL" in capsys.readouterr().out
    assert main(["gate", "--baseline", str(base), "--current", str(noisy)]) == 3
    assert "INCONCLUSIVE" in capsys.readouterr().out
    assert main(["gate", "--baseline", str(base), "--current", str(same), "--fail-on", "bogus"]) == 2


def test_report_writes_markdown_html_and_schema(tmp_path: Path) -> None:
    (tmp_path / "run.jsonl").write_text(FROZEN.read_text())
    assert main(["report", "--results", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "](RECORDS.md#r-" in readme and "pass 4/4" in readme
    assert "<figure class='plot' id='plot-training'><svg" in (tmp_path / "index.html").read_text()
    assert json.loads((tmp_path / "schema.json").read_text())["title"] == "Record"


def test_env_prints_the_fingerprint() -> None:
    result = mlsuite("env", "--json")
    assert result.returncode == 0
    env = json.loads(result.stdout)
    assert env["cpu_cores"] >= 1 and "torch_intra_op" in env["threads"]


def test_unknown_tracker_is_a_one_line_error(tmp_path: Path) -> None:
    one_line_error(mlsuite("run", "--only", "training.baseline", "--track", "nosuchtool", "--out", str(tmp_path)),
                   "--track nosuchtool: no such sink")


@pytest.mark.slow
def test_run_logs_each_record_to_the_tracker(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from suite.schema import load_records

    result = mlsuite("--packages", "tests.planted,reference", "run", "--only", "planted.ok", "--track", "tensorboard",
                     "--replicates", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    runs = sorted(p.name for p in (tmp_path / "tracking" / "tensorboard").iterdir())
    assert len(runs) == 2 and all(name.startswith("planted.ok-") for name in runs)
    (results,) = tmp_path.glob("*.jsonl")
    assert [len(r.runs) for r in load_records(results)] == [1, 1]  # --replicates, not the profile's 3


def test_report_links_artifacts_written_under_results(tmp_path: Path) -> None:
    from suite.report import artifact_links

    plot = tmp_path / "artifacts" / "run" / "fam.tech" / "h" / "curve.png"
    plot.parent.mkdir(parents=True)
    plot.write_bytes(b"png")
    inside = record(timings(0.01, 1)).model_copy(update={"provenance": {"artifacts": [str(plot), "/elsewhere/x.png"]}})
    assert artifact_links(inside, tmp_path) == [("curve.png", "artifacts/run/fam.tech/h/curve.png")]
