"""Tracking conformance for MLflow, TensorBoard and W&B: an exact round trip through each
tool's own reader, and a killed run that stays readable, unfinished and in a usable store,
in every logging mode each tool offers (MLflow's synchronous and async logging).
Each check also fails on a planted bug (the broken trackers below; the killed child imports
them from this module by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
psutil = pytest.importorskip("psutil")

from mlflow.entities import RunStatus  # noqa: E402

from reference.tracking import conformance, interrupted, trackers  # noqa: E402
from reference.tracking.mlflow_tracker import MlflowTracker  # noqa: E402
from reference.tracking.tensorboard_tracker import TensorBoardTracker  # noqa: E402
from reference.tracking.wandb_tracker import WandbTracker  # noqa: E402

TOOLS = list(trackers.MODES)
TOOL_MODES = [(tool, mode) for tool, modes in trackers.MODES.items() for mode in modes]
KILL_AFTER = {"mlflow": 10, "tensorboard": 10, "wandb": 600}  # W&B needs full 32 KiB blocks
SEED = 5


class MlflowWithoutSteps(MlflowTracker):
    """Planted bug: every metric logged at step 0 (the step argument forgotten)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        super().log_metrics(0, metrics)


class TensorBoardFloat32(TensorBoardTracker):
    """Planted bug: SummaryWriter's default add_scalar, which stores float32."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)


class WandbLogPerKey(WandbTracker):
    """Planted bug: one wandb.log call per key without step=, so each call advances _step."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.run.log({key: value})


class MlflowAsyncFlushReturnsEarly(MlflowTracker):
    """Planted bug in the async mode: flush() returns while the steps are still queued in
    the process (drained only by finish()), so a kill loses what was reported flushed."""

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(root, **{**options, "synchronous": False})
        self.queued: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.queued.append((step, metrics))

    def flush(self) -> None:
        return None

    def finish(self) -> None:
        for step, metrics in self.queued:
            super().log_metrics(step, metrics)
        super().flush()
        super().finish()


class MlflowFinishedAtStart(MlflowTracker):
    """Planted bug: the run is marked FINISHED as soon as it starts."""

    def start(self, run_name: str, params: dict[str, Any]) -> None:
        super().start(run_name, params)
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))


class TensorBoardNeverFlushes(TensorBoardTracker):
    """Planted bug: steps are batched in memory "for speed" and written only by finish()."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.pending = [*getattr(self, "pending", []), (step, metrics)]

    def flush(self) -> None:
        return None

    def finish(self) -> None:
        for step, metrics in self.pending:
            super().log_metrics(step, metrics)
        super().finish()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One store per tool for the whole module: MLflow builds its sqlite schema once."""
    return {tool: tmp_path_factory.mktemp(tool) for tool in TOOLS}


def round_trip(tracker_class: Any, root: Path):  # type: ignore[no-untyped-def]
    run, model, example = conformance.sample_payload(SEED, steps=30)
    tracker = tracker_class(root)
    conformance.log_run(tracker, "round-trip", run, model, example)
    return conformance.round_trip(f"track.{tracker_class.tool}.round_trip", tracker_class, run,
                                  tracker_class.read(tracker.locator()))


@pytest.mark.parametrize("tool", TOOLS)
def test_what_is_logged_reads_back_identical(stores: dict[str, Path], tool: str) -> None:
    check = round_trip(trackers.tracker_class(tool), stores[tool])
    assert check.passed, check.detail
    assert "3 artifacts" in check.detail and "90 values" in check.detail


@pytest.mark.parametrize(("broken", "tool", "symptom"), [
    (MlflowWithoutSteps, "mlflow", "logged step 1"),
    (TensorBoardFloat32, "tensorboard", "metric accuracy: logged step 0"),
    (WandbLogPerKey, "wandb", "read step 4"),
])
@pytest.mark.breaks("track.<tool>.round_trip")
def test_round_trip_catches_planted_bugs(stores: dict[str, Path], broken: Any, tool: str, symptom: str) -> None:
    check = round_trip(broken, stores[tool])
    assert not check.passed and symptom in check.detail, check.detail


def test_round_trip_compares_models_and_graphs() -> None:
    run, model, _ = conformance.sample_payload(SEED, steps=2)
    import numpy as np

    read = MlflowTracker.as_stored(run)
    read.model = {name: np.zeros_like(value) for name, value in run.model.items()}
    assert not conformance.round_trip("track.mlflow.round_trip", MlflowTracker, run, read).passed
    read = TensorBoardTracker.as_stored(run)
    read.graph_ops = ("input/input.1",)
    assert "missing" in conformance.round_trip("track.tensorboard.round_trip", TensorBoardTracker, run, read).detail


def session_leftovers(locator_root: Path) -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if any(str(locator_root) in c for c in p.info["cmdline"] or [])]


def kill_and_check(spec: str, tracker_class: Any, root: Path,
                   options: dict[str, Any] | None = None) -> tuple[list, interrupted.Interrupted]:
    killed = interrupted.interrupt(spec, root, SEED, after_flushed=KILL_AFTER.get(spec, 10), options=options)
    found = conformance.interrupted_run(f"track.{tracker_class.tool}.interrupted", tracker_class, killed, SEED)
    found.append(conformance.store_usable(f"track.{tracker_class.tool}.store_usable_after_kill", tracker_class,
                                          root, SEED))
    assert session_leftovers(root) == [], "a process of the killed run outlived it"
    return found, killed


@pytest.mark.parametrize(("tool", "mode"), TOOL_MODES)
def test_a_killed_run_is_readable_unfinished_and_the_store_still_works(stores: dict[str, Path], tool: str,
                                                                        mode: str) -> None:
    found, killed = kill_and_check(tool, trackers.tracker_class(tool), stores[tool], trackers.MODES[tool][mode])
    assert killed.exit_code == -9
    assert all(c.passed for c in found), [c for c in found if not c.passed]


@pytest.mark.breaks("track.<tool>.interrupted.unfinished")
def test_interruption_check_catches_a_run_marked_finished_too_early(stores: dict[str, Path]) -> None:
    found, _ = kill_and_check(f"{__name__}:MlflowFinishedAtStart", MlflowFinishedAtStart, stores["mlflow"])
    failed = {c.name for c in found if not c.passed}
    assert failed == {"track.mlflow.interrupted.unfinished"}


@pytest.mark.breaks("track.<tool>.interrupted.exact_prefix", "track.<tool>.interrupted.kept_flushed_steps")
def test_interruption_check_catches_a_tracker_that_does_not_flush(stores: dict[str, Path]) -> None:
    found, killed = kill_and_check(f"{__name__}:TensorBoardNeverFlushes", TensorBoardNeverFlushes,
                                   stores["tensorboard"])
    failed = {c.name for c in found if not c.passed}
    assert killed.flushed >= 10 and "track.tensorboard.interrupted.kept_flushed_steps" in failed


@pytest.mark.breaks("track.<tool>.interrupted.kept_flushed_steps")
def test_interruption_check_catches_an_async_flush_that_returns_before_the_queue_drains(
        stores: dict[str, Path]) -> None:
    found, killed = kill_and_check(f"{__name__}:MlflowAsyncFlushReturnsEarly", MlflowAsyncFlushReturnsEarly,
                                   stores["mlflow"], trackers.MODES["mlflow"]["async"])
    failed = {c.name for c in found if not c.passed}
    assert killed.flushed >= 10 and "track.mlflow.interrupted.kept_flushed_steps" in failed


@pytest.mark.breaks("track.<tool>.interrupted.readable", "track.<tool>.store_usable_after_kill")
def test_interruption_check_catches_a_corrupted_store(tmp_path: Path) -> None:
    """Planted corruption: the middle of MLflow's sqlite file overwritten after the kill."""
    killed = interrupted.interrupt("mlflow", tmp_path, SEED, after_flushed=5)
    database = tmp_path / "mlflow.db"
    data = bytearray(database.read_bytes())
    data[len(data) // 4: len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 4)
    database.write_bytes(bytes(data))
    found = conformance.interrupted_run("track.mlflow.interrupted", MlflowTracker, killed, SEED)
    assert not found[0].passed and found[0].name == "track.mlflow.interrupted.readable"
    assert not conformance.store_usable("track.mlflow.store_usable_after_kill", MlflowTracker, tmp_path, SEED).passed


def test_unknown_tools_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tracking tool"):
        trackers.create("neptune", tmp_path)
    assert trackers.tracker_class(f"{__name__}:TensorBoardFloat32") is TensorBoardFloat32
