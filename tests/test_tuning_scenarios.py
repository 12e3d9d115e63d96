"""The tuning scenarios as the harness runs them: registered with quick profiles, light to
import, and producing metrics with units, passing checks and the plots they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from suite import registry
from suite.context import RunContext
from suite.profiles import PROFILES

HEAVY = ("torch", "optuna", "ray", "mlflow", "wandb", "tensorboard", "sklearn")
FAST = PROFILES["quick"].model_copy(update={"warmup_s": 0.0, "max_time_s": 0.05, "min_samples": 5})


def test_scenario_modules_import_nothing_heavy() -> None:
    code = ("import sys, reference.tuning.scenarios, reference.tracking.scenarios; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_every_tuning_scenario_is_registered_with_a_quick_profile() -> None:
    registry.discover()
    found = {sid: cls for sid, cls in registry.scenarios().items() if cls.__module__ == "reference.tuning.scenarios"}
    assert len(found) >= 2, found  # the id/folder agreement is tests/test_layout_contract.py's
    assert all(cls.param_grid("quick") for cls in found.values())


def run(scenario_id: str, artifact_root: Path | None = None, **params) -> tuple[list, list, dict]:  # type: ignore[no-untyped-def]
    registry.discover()
    cls = registry.get(scenario_id)
    resolved = {name: values[0] for name, values in {**cls.grid, **cls.profiles["quick"]}.items()} | params
    ctx = RunContext(params=resolved, budget=FAST, profile="quick", seed=0, artifact_root=artifact_root)
    instance = cls()
    instance.setup(ctx)
    metrics = instance.measure(ctx)
    return metrics, instance.check(ctx), ctx.provenance


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.mark.parametrize("storage", ["memory", "journal"])
def test_optuna_overhead_scenario(storage: str) -> None:
    pytest.importorskip("optuna")
    metrics, checks, provenance = run("tuning.optuna", storage=storage, repeat_trials=8)
    names = {m.name: m for m in metrics}
    assert names["trial_throughput"].unit == "trials/s" and names["trial_step_time"].n >= 5
    assert checks and all(c.passed for c in checks), checks
    assert provenance["trials_in_study_after_timing"] >= 5


def test_quality_scenario_writes_its_regret_curve(artifacts: Path) -> None:
    pytest.importorskip("optuna")
    metrics, checks, provenance = run("tuning.quality", artifacts, function="branin", seeds=5)
    assert {"tpe.regret@40", "random.regret@40"} <= {m.name for m in metrics}
    assert [c.passed for c in checks] == [True], checks
    png = Path(provenance["artifacts"][0])
    assert png.is_relative_to(artifacts) and png.read_bytes()[:4] == b"\x89PNG"


def test_pruning_scenario(artifacts: Path) -> None:
    pytest.importorskip("torch")
    metrics, checks, provenance = run("tuning.optuna.pruning", artifacts, trials=6, epochs=3)
    assert all(c.passed for c in checks), checks
    assert {m.name for m in metrics} >= {"epochs_saved", "bad_trials_pruned", "study_wall"}
    assert len(provenance["artifacts"]) == 3


def test_grid_sweep_scenario_runs_the_shipped_config() -> None:
    pytest.importorskip("torch")
    metrics, checks, _ = run("tuning.sweep", method="grid", backend="optuna")
    assert all(c.passed for c in checks) and len(checks) == 3, checks
    assert 0.5 < next(m for m in metrics if m.name == "best_val_accuracy").value <= 1.0


def test_anytime_scenario_without_ray(artifacts: Path) -> None:
    pytest.importorskip("torch")
    metrics, checks, provenance = run("tuning.anytime", artifacts, methods="tpe,random", seeds=2, trials=4, epochs=2)
    names = {m.name for m in metrics}
    assert {"tpe.best_val_accuracy", "random.reached_target", "random.search_wall"} <= names
    assert checks == [] and Path(provenance["artifacts"][0]).exists()
    with pytest.raises(ValueError, match="unknown methods"):
        run("tuning.anytime", methods="tpe,smac")
