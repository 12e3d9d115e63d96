"""The runner records every outcome, loses nothing on a crash, and resumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from suite import registry
from suite.profiles import PROFILES
from suite.runner import run
from suite.schema import Status, load_records
from tests.planted.faults.watch import processes_with

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
    assert [w for w in warnings if "failed to import" in w] == [  # (and maybe a sweep of killed runs' leftovers)
        "scenario module tests.planted.broken.scenarios failed to import: "
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
    assert record.status is Status.failed
    assert record.reason == "checks failed: planted.too_big; checks inconclusive: planted.unsettled"


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


def test_a_narrower_resume_keeps_the_other_jobs_finished_runs(tmp_path: Path, empty_registry: None) -> None:
    def interrupt_at_third(label: str, index: int, total: int) -> None:
        if index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # run 1 of n=1 and of n=2 are kept
        run("planted.ok", "quick", FAST, tmp_path, packages=PLANTED, on_start=interrupt_at_third)
    path = run("planted.ok", "quick", FAST, tmp_path, resume=True, packages=PLANTED, where={"n": "1"})
    assert [r.params["n"] for r in load_records(path)] == [1]
    started: list[str] = []
    run("planted.ok", "quick", FAST, tmp_path, resume=True, packages=PLANTED,
        on_start=lambda label, i, n: started.append(label))
    assert started == ["planted.ok {'n': 2} run 2/2"]  # n=2's first run survived the narrower resume
    assert sorted(r.params["n"] for r in load_records(path)) == [1, 2]
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


NO_TORCH = Path(__file__).parent / "planted" / "no_torch"


@pytest.fixture
def light_workers(monkeypatch: pytest.MonkeyPatch, empty_registry: None) -> None:
    """Workers that skip importing torch (these tests are about processes and files)."""
    monkeypatch.setenv("PYTHONPATH", str(NO_TORCH))


def keys_of(path: Path) -> list[tuple[str, str]]:
    return [r.key for r in load_records(path)]


def test_a_cut_off_last_record_moves_to_partial_and_resume_completes(tmp_path: Path, light_workers: None) -> None:
    path = run("faults.steps", "quick", FAST, tmp_path, packages=PLANTED)
    whole = path.read_bytes()
    first_end = whole.index(b"\n") + 1
    path.write_bytes(whole[: first_end + 40])  # the second record cut 40 bytes in
    warnings: list[str] = []
    resumed = run("faults.steps", "quick", FAST, tmp_path, resume=True, packages=PLANTED, on_warning=warnings.append)
    assert resumed == path
    assert path.with_name(path.name + ".partial").read_bytes() == whole[first_end: first_end + 40] + b"\n"
    records = load_records(path)
    assert sorted(r.params["n"] for r in records) == [1, 2]
    assert path.read_bytes().startswith(whole[:first_end])  # the complete record kept as it was
    assert any("cut off" in w and ".partial" in w for w in warnings)


def test_a_last_record_that_only_lost_its_newline_is_kept(tmp_path: Path, light_workers: None) -> None:
    path = run("faults.steps", "quick", FAST, tmp_path, packages=PLANTED)
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    started: list[str] = []
    run("faults.steps", "quick", FAST, tmp_path, resume=True, packages=PLANTED,
        on_start=lambda label, i, n: started.append(label))
    assert started == [] and path.read_bytes() == whole
    assert not path.with_name(path.name + ".partial").exists()


def test_a_second_session_on_a_locked_file_is_refused_in_one_line(tmp_path: Path, light_workers: None) -> None:
    from suite.errors import SuiteError
    from suite.runner import exclusive

    path = run("faults.steps", "quick", FAST, tmp_path, packages=PLANTED)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with exclusive(path), pytest.raises(SuiteError) as refused:
        run("faults.steps", "quick", FAST, tmp_path, resume=True, packages=PLANTED)
    message = str(refused.value)
    assert "being written by another mlsuite run" in message and f"pid {os.getpid()}" in message
    assert "\n" not in message and len(load_records(path)) == 1
    assert not path.with_suffix(".lock").exists()  # the holder removes it on leaving


def test_a_lock_left_by_a_killed_session_does_not_block(tmp_path: Path, light_workers: None) -> None:
    path = run("faults.steps", "quick", FAST, tmp_path, packages=PLANTED)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    path.with_suffix(".lock").write_text("999999\n")  # nobody holds it: its session was killed
    run("faults.steps", "quick", FAST, tmp_path, resume=True, packages=PLANTED)
    assert len(load_records(path)) == 2 and not path.with_suffix(".lock").exists()


def test_retry_errors_replaces_the_error_record_and_keeps_the_old_one(
        tmp_path: Path, light_workers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSUITE_FAULTS_FAIL", "1")
    path = run("faults.[fs][lt]*", "quick", FAST, tmp_path, packages=PLANTED)
    before = load_records(path)
    error = next(r for r in before if r.scenario == "faults.flaky")
    assert error.status is Status.error
    monkeypatch.delenv("MLSUITE_FAULTS_FAIL")
    started: list[str] = []
    run("faults.[fs][lt]*", "quick", FAST, tmp_path, resume=True, packages=PLANTED,
        on_start=lambda label, i, n: started.append(label))
    assert started == [] and len(load_records(path)) == 3  # without --retry-errors an error stays
    run("faults.[fs][lt]*", "quick", FAST, tmp_path, resume=True, retry_errors=True, packages=PLANTED)
    after = load_records(path)
    assert len(after) == 3 and len(set(keys_of(path))) == 3
    flaky = next(r for r in after if r.scenario == "faults.flaky")
    assert flaky.status is Status.ok and flaky.metric("answer") is not None
    assert [r.model_dump_json() for r in after if r.scenario != "faults.flaky"] == [
        r.model_dump_json() for r in before if r.scenario != "faults.flaky"]
    replaced = path.with_suffix(".replaced").read_text().splitlines()
    assert replaced == [error.model_dump_json()]


def test_retry_errors_needs_resume(tmp_path: Path, light_workers: None) -> None:
    from suite.errors import SuiteError

    with pytest.raises(SuiteError, match="use it with --resume"):
        run("faults.steps", "quick", FAST, tmp_path, retry_errors=True, packages=PLANTED)


def test_resume_with_several_results_files_continues_only_the_newest(tmp_path: Path, light_workers: None) -> None:
    older = run("faults.steps", "quick", FAST, tmp_path, packages=PLANTED)
    newer = run("faults.steps", "quick", FAST, tmp_path, packages=PLANTED)
    assert newer != older and newer.name > older.name
    older_text = older.read_text()
    older.write_text(older_text.splitlines()[0] + "\n")  # both interrupted; only the newest is continued
    older_cut = older.read_text()
    newer.write_text(newer.read_text().splitlines()[0] + "\n")
    resumed = run("faults.steps", "quick", FAST, tmp_path, resume=True, packages=PLANTED)
    assert resumed == newer and older.read_text() == older_cut
    assert sorted(r.params["n"] for r in load_records(newer)) == [1, 2]
    assert len({r.run_id for r in load_records(newer)}) == 1


def test_a_killed_worker_is_an_error_and_its_server_and_temp_folder_go(tmp_path: Path, light_workers: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import tempfile
    import threading
    import time

    marker = str(tmp_path / "tmp")
    Path(marker).mkdir()
    monkeypatch.setenv("TMPDIR", marker)  # every process of this test carries it in its environment
    monkeypatch.setattr(tempfile, "tempdir", None)  # and this process reads it again

    def kill_the_worker_once_it_serves() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            processes = processes_with(marker)
            if any("http.server" in command for command in processes.values()):
                for pid, command in processes.items():
                    if "suite.worker" in command:
                        os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_once_it_serves)
    killer.start()
    path = run("faults.server", "quick", FAST.model_copy(update={"replicates": 1}), tmp_path / "out",
               packages=PLANTED)
    killer.join()
    record = load_records(path)[0]
    assert record.status is Status.error and "exited with code -9" in record.reason
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == {}  # the server, its group's `sleep` and the worker's child
    assert list(Path(marker).iterdir()) == []


def test_the_sweep_removes_only_what_dead_runners_left(tmp_path: Path) -> None:
    import subprocess
    import sys

    from suite import leftovers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{leftovers.JOB_PREFIX}{os.getpid()}-live"
    theirs = tmp_path / f"{leftovers.JOB_PREFIX}{dead.pid}-dead"
    noted, outside, other = tmp_path / "mlsuite-serving-x", tmp_path / "deeper" / "y", tmp_path / "not-noted"
    for folder in (mine, theirs, noted, outside, other):
        folder.mkdir(parents=True)
    (theirs / leftovers.LEDGER).write_text(f"{noted}\n{outside}\n")
    (mine / leftovers.LEDGER).write_text(f"{other}\n")
    removed = leftovers.sweep(tmp_path)
    assert sorted(removed) == sorted([noted, theirs])
    assert mine.exists() and other.exists() and outside.exists() and not noted.exists()


def test_a_worker_notes_the_temporary_paths_it_makes_in_the_temp_dir_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    from suite import leftovers

    ledger, nested = tmp_path / "ledger", tmp_path / "nested"
    nested.mkdir()
    code = (f"import tempfile; from suite import leftovers; leftovers.note_temporary_paths({str(ledger)!r}); "
            "tempfile.mkdtemp(prefix='a-'); tempfile.NamedTemporaryFile(prefix='b-', delete=False); "
            "tempfile.TemporaryDirectory(prefix='c-').cleanup(); "
            f"tempfile.mkdtemp(dir={str(nested)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TMPDIR": str(tmp_path)},
                   cwd=Path(__file__).parent.parent)
    noted = [Path(line) for line in ledger.read_text().splitlines()]
    assert [p.name[:2] for p in noted] == ["a-", "b-", "c-"] and all(p.parent == tmp_path for p in noted)
    job = tmp_path / f"{leftovers.JOB_PREFIX}1-x"
    job.mkdir()
    ledger.rename(job / leftovers.LEDGER)
    assert sorted(leftovers.remove_noted(job)) == sorted(p for p in noted if not p.name.startswith("c-"))
    assert not any(p.exists() for p in noted) and len(list(nested.iterdir())) == 1


def test_a_job_whose_runs_all_finished_before_a_kill_gets_its_record_on_resume(
        tmp_path: Path, empty_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between keeping a job's last run and writing its record: resume writes the
    record from the kept runs, without running them again."""
    import suite.runner as runner

    real_append = runner.append_record

    def killed(path: Path, record) -> None:  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "append_record", killed)
    with pytest.raises(KeyboardInterrupt):
        run("planted.ok", "quick", FAST, tmp_path, packages=PLANTED)
    monkeypatch.setattr(runner, "append_record", real_append)
    started: list[str] = []
    path = run("planted.ok", "quick", FAST, tmp_path, resume=True, packages=PLANTED,
               on_start=lambda label, i, n: started.append(label))
    assert started == ["planted.ok {'n': 2} run 2/2"]  # n=1's two runs were kept: only n=2's last runs
    records = load_records(path)
    assert sorted(r.params["n"] for r in records) == [1, 2] and all(len(r.runs) == 2 for r in records)


def test_timed_runs_of_a_job_take_turns_and_counted_ones_go_side_by_side_after_the_first() -> None:
    from suite.runner import Job, next_run

    class Step(registry.Scenario):
        id = "fam.step"

    a, b = Job(Step, {"n": 1}, 3), Job(Step, {"n": 2}, 3)
    assert next_run([a, b], []) is a and next_run([a, b], [a]) is b
    assert next_run([a, b], [a, b]) is None  # timed: one run of a job at a time
    assert next_run([a, b], [a, b], side_by_side=True) is None  # no first run in yet: it may break or be skipped
    a.outcomes = [{"status": Status.ok.value}]
    assert next_run([a, b], [a, b]) is None and next_run([a, b], [a, b], side_by_side=True) is a
    assert next_run([a], [a, a], side_by_side=True) is None  # 1 in + 2 running: all 3 begun
    a.outcomes = [{"status": Status.skipped.value}]
    assert next_run([a, b], [b], side_by_side=True) is None  # a skipped first run ends the job


def test_a_scenario_that_needs_two_cpus_gets_them_whatever_the_budget(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A load generator and its server each need a core: a 1-thread budget used to pin
    the worker, and with it both, to one CPU."""
    from suite import host

    monkeypatch.setattr(registry.Scenario, "cpus", 2)  # the planted classes are reloaded by run(): patch their base
    path = run("planted.ok", "quick", FAST.model_copy(update={"replicates": 1, "threads": 1}), tmp_path,
               packages=PLANTED)
    runs = [each for record in load_records(path) for each in record.runs]
    assert len(runs) == 2 and all(len(each.cpus) == min(2, len(host.affinity())) for each in runs)
