"""The runner records every outcome, loses nothing on a crash, and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite import registry
from suite.profiles import PROFILES
from suite.runner import run
from suite.schema import Status, load_records

PLANTED = ("tests.planted",)
FAST = PROFILES["quick"].model_copy(update={"warmup_s": 0.0, "max_time_s": 0.05, "min_samples": 10, "replicates": 2})


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> list:
    held = registry.reset()
    warnings: list[str] = []
    try:
        path = run("planted.*", "quick", FAST, tmp_path_factory.mktemp("results"), packages=PLANTED,
                   on_warning=warnings.append)
    finally:
        registry.restore(held)
    assert warnings == ["scenario module tests.planted.broken.scenarios failed to import: "
                        "ImportError: planted: this family's dependency is missing"]
    return load_records(path)


def by_scenario(records: list) -> dict:
    return {r.scenario: r for r in records}


def test_every_point_of_every_grid_gets_one_record(planted_run: list) -> None:
    assert sorted((r.scenario, r.params["n"]) for r in planted_run) == [
        ("planted.check_fails", 1), ("planted.crashes", 1), ("planted.hangs", 1), ("planted.needs_binary", 1),
        ("planted.ok", 1), ("planted.ok", 2), ("planted.raises", 1), ("planted.skips_at_runtime", 1)]


def test_a_healthy_scenario_is_ok_with_timed_metrics(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.ok"]
    assert record.status is Status.ok
    step = record.metric("step_time")
    assert step is not None and step.n >= 10 and step.unit == "s" and not step.higher_is_better
    assert step.overhead is not None and step.overhead > 0
    assert {c.name for c in record.checks} == {"planted.fine", "harness.timer_overhead"}


def test_an_exception_is_an_error_with_the_step_and_message(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.raises"]
    assert record.status is Status.error
    assert record.reason == "measure: RuntimeError: planted failure in measure"
    assert "Traceback" in record.provenance["traceback"]


def test_a_crash_is_an_error_with_the_exit_code_and_output(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.crashes"]
    assert record.status is Status.error
    assert "exited with code 3" in record.reason and "about to die" in record.reason


def test_a_hang_is_killed_at_the_timeout(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.hangs"]
    assert record.status is Status.error and record.reason.startswith("timed out after 3s")
    assert record.duration_s < 30


def test_a_failing_check_is_failed_not_ok(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.check_fails"]
    assert record.status is Status.failed and record.reason == "checks failed: planted.too_big"


def test_unmet_requirement_and_runtime_skip_are_skipped_with_reason(planted_run: list) -> None:
    records = by_scenario(planted_run)
    assert records["planted.needs_binary"].status is Status.skipped
    assert records["planted.needs_binary"].reason == "binary no-such-binary-mlsuite is not on PATH"
    assert records["planted.skips_at_runtime"].status is Status.skipped
    assert records["planted.skips_at_runtime"].reason == "server refused to start: planted"


def test_records_carry_environment_and_identity(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.ok"]
    assert record.env.cpu_cores >= 1 and record.env.threads["OMP_NUM_THREADS"]
    assert len(record.config_hash) == 16 and len(record.source_hash) == 16
    assert len({r.run_id for r in planted_run}) == 1


def test_a_record_keeps_each_process_run_apart(planted_run: list) -> None:
    record = by_scenario(planted_run)["planted.ok"]
    step = record.metric("step_time")
    assert step is not None and len(step.run_sizes) == 2 and sum(step.run_sizes) == len(step.samples)
    assert len(step.run_values) == 2 and step.value == sorted(step.run_values)[0] + (
        sorted(step.run_values)[1] - sorted(step.run_values)[0]) / 2
    assert step.between_run_cv is not None and step.ci_low <= step.value <= step.ci_high
    assert record.metric("cpu_time") is not None


def test_each_run_records_what_the_host_was_doing(planted_run: list) -> None:
    runs = by_scenario(planted_run)["planted.ok"].runs
    assert [r.index for r in runs] == [0, 1]
    for run_host in runs:
        assert run_host.threads == len(run_host.cpus) >= 1 and len(run_host.load_before) == 3
        assert run_host.runqueue_wait_fraction is not None and run_host.runqueue_wait_fraction >= 0
        assert run_host.cpu_per_wall is not None and run_host.cpu_per_wall > 0


def test_a_broken_first_run_is_not_replicated(planted_run: list) -> None:
    assert len(by_scenario(planted_run)["planted.raises"].runs) == 1


def test_runs_go_round_robin_and_resume_keeps_finished_runs(tmp_path: Path, empty_registry: None) -> None:
    started: list[str] = []

    def interrupt_at_third(label: str, index: int, total: int) -> None:
        started.append(label)
        if index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("planted.ok", "quick", FAST, tmp_path, packages=PLANTED, on_start=interrupt_at_third)
    assert [label.split()[-1] for label in started] == ["1/2", "1/2", "2/2"]  # run 1 of both, then run 2
    resumed_starts: list[str] = []
    path = run("planted.ok", "quick", FAST, tmp_path, resume=True, packages=PLANTED,
               on_start=lambda label, i, n: resumed_starts.append(label))
    assert len(resumed_starts) == 2  # the two runs already finished were kept, not redone
    records = load_records(path)
    assert sorted(r.params["n"] for r in records) == [1, 2]
    assert all(len(r.runs) == 2 for r in records)
    assert not path.with_suffix(".runs").exists()


def test_resume_runs_only_what_is_missing(tmp_path: Path, empty_registry: None) -> None:
    path = run("planted.ok", "quick", FAST, tmp_path, packages=PLANTED)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n")  # as if interrupted after the first record
    started = []
    resumed = run("planted.ok", "quick", FAST, tmp_path, resume=True, packages=PLANTED,
                  on_start=lambda label, i, n: started.append(label))
    assert resumed == path
    assert len(started) == FAST.replicates
    records = load_records(path)
    assert sorted(r.params["n"] for r in records) == [1, 2]
    assert len({r.run_id for r in records}) == 1


def test_sigterm_stops_the_run_and_kills_the_worker(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "suite", "--packages", "tests.planted", "run",
                                "--only", "planted.hangs", "--out", str(tmp_path)], cwd=Path(__file__).parent.parent,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: list[str] = []
    while time.monotonic() < deadline and not workers:
        time.sleep(0.2)
        found = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "suite.worker"], capture_output=True, text=True)
        workers = found.stdout.split()
    assert workers, "the worker never started"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "interrupted" in stderr
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
