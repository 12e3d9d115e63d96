"""Optuna conformance: seeded reproducibility on every storage, the MedianPruner stopping
the hopeless half by step 2, TPE beating random search with a CI; each check also fails on
a planted bug."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

from reference.tuning import conformance, objectives, search, studies, visualize  # noqa: E402


def seeded_run(tmp_path: Path, storage: str, label: str, sampler: optuna.samplers.BaseSampler,
               objective: objectives.Objective, n_trials: int = 15):  # type: ignore[no-untyped-def]
    directory = tmp_path / label
    directory.mkdir()
    study = studies.create_study(objective, sampler=sampler, storage=studies.open_storage(storage, directory),
                                 study_name=label)
    studies.optimize(study, objective, n_trials=n_trials)
    return studies.trial_records(study), study.best_value


@pytest.mark.parametrize("storage", ["memory", "sqlite", "journal"])
def test_same_seed_gives_the_same_trials_on_every_storage(tmp_path: Path, storage: str) -> None:
    branin = objectives.branin()
    first = seeded_run(tmp_path, storage, "a", studies.make_sampler("tpe", 7), branin)
    second = seeded_run(tmp_path, storage, "b", studies.make_sampler("tpe", 7), branin)
    check = conformance.reproducible(f"tuning.optuna.{storage}.same_seed_same_trials", first[0], second[0], first[1],
                                     second[1])
    assert check.passed, check.detail
    memory = seeded_run(tmp_path, "memory", "m", studies.make_sampler("tpe", 7), branin)
    assert conformance.reproducible(f"tuning.optuna.{storage}.matches_in_memory", first[0], memory[0], first[1],
                                    memory[1]).passed


@pytest.mark.breaks("tuning.optuna.<storage>.matches_in_memory")
def test_storage_check_catches_a_storage_that_drops_intermediate_values(tmp_path: Path) -> None:
    """Planted bug: a storage that keeps each trial's final value but loses its reports."""
    branin = objectives.learning_curve(steps=3)
    stored = seeded_run(tmp_path, "sqlite", "a", studies.make_sampler("tpe", 7), branin, n_trials=4)
    memory = seeded_run(tmp_path, "memory", "m", studies.make_sampler("tpe", 7), branin, n_trials=4)
    lossy = [dataclasses.replace(record, intermediate=()) for record in stored[0]]
    assert conformance.reproducible("tuning.optuna.sqlite.matches_in_memory", stored[0], memory[0], stored[1],
                                    memory[1]).passed
    check = conformance.reproducible("tuning.optuna.sqlite.matches_in_memory", lossy, memory[0], stored[1], memory[1])
    assert not check.passed and "trial 0 differs" in check.detail


@pytest.mark.breaks("tuning.optuna.<storage>.same_seed_same_trials")
def test_reproducibility_check_catches_an_unseeded_sampler(tmp_path: Path) -> None:
    branin = objectives.branin()
    first = seeded_run(tmp_path, "sqlite", "a", studies.make_sampler("tpe", None), branin)
    second = seeded_run(tmp_path, "sqlite", "b", studies.make_sampler("tpe", None), branin)
    check = conformance.reproducible("tuning.optuna.sqlite.same_seed_same_trials", first[0], second[0], first[1],
                                     second[1])
    assert not check.passed and "differs" in check.detail


@pytest.mark.breaks("tuning.optuna.<storage>.same_seed_same_trials")
def test_reproducibility_check_catches_an_objective_seeded_from_the_clock(tmp_path: Path) -> None:
    """Planted bug: digits training seeded from the clock (as if torch.manual_seed were forgotten)."""
    def clock_seeded(params, report):  # type: ignore[no-untyped-def]
        return objectives.train_digits(params, report, epochs=1, seed=time.perf_counter_ns() % 1000)

    digits = dataclasses.replace(objectives.digits_objective(epochs=1), fn=clock_seeded)
    first = seeded_run(tmp_path, "memory", "a", studies.make_sampler("random", 0), digits, n_trials=3)
    second = seeded_run(tmp_path, "memory", "b", studies.make_sampler("random", 0), digits, n_trials=3)
    assert not conformance.reproducible("tuning.optuna.memory.same_seed_same_trials", first[0], second[0], first[1],
                                        second[1]).passed


def pruning_objective(epochs: int = 3) -> objectives.Objective:
    return conformance.hopeless_half_objective(epochs)


def pruning_checks(objective: objectives.Objective, pruner: str = "median") -> list:
    study, bad = conformance.hopeless_half_study(objective, pruner, 8, seed=0)
    return pruned_checks(studies.trial_records(study), bad)


def pruned_checks(records: list, bad: set[int]) -> list:
    return conformance.pruned_bad_half("tuning.optuna.pruning", records, bad, startup_trials=conformance.PRUNER_STARTUP,
                                       by_step=conformance.PRUNED_BY_STEP)


def test_median_pruner_stops_the_hopeless_half_by_step_2() -> None:
    found = pruning_checks(pruning_objective())
    assert all(c.passed for c in found), found


@pytest.mark.breaks("tuning.optuna.pruning.bad_pruned_by_step_<step>")
def test_pruning_check_catches_a_pruner_that_never_prunes() -> None:
    found = pruning_checks(pruning_objective(), pruner="none")
    assert not found[0].passed and "not pruned" in found[0].detail


@pytest.mark.breaks("tuning.optuna.pruning.bad_pruned_by_step_<step>")
def test_pruning_check_catches_a_study_optimising_the_wrong_direction() -> None:
    """Planted bug: accuracy minimised, so the pruner keeps the hopeless trials."""
    found = pruning_checks(dataclasses.replace(pruning_objective(), direction="minimize"))
    assert not all(c.passed for c in found)


@pytest.mark.breaks("tuning.optuna.pruning.best_not_pruned")
def test_pruning_check_catches_a_pruner_that_throws_away_the_good_trials() -> None:
    """Planted bug: an inverted pruner that prunes every good trial (startup ones too) and
    lets the hopeless ones complete, so the best completed trial is a hopeless one."""
    study, bad = conformance.hopeless_half_study(pruning_objective(), "none", 6, seed=0)
    inverted = [dataclasses.replace(r, state="PRUNED", value=None) if r.number not in bad else r
                for r in studies.trial_records(study)]
    found = {c.name: c for c in pruned_checks(inverted, bad)}
    assert not found["tuning.optuna.pruning.best_not_pruned"].passed


QUALITY = "tuning.quality.branin.tpe_beats_random"


def final_regrets(objective: objectives.Objective, method: str, seeds: range, budget: int,
                  scored_by: objectives.Objective | None = None) -> list[float]:
    scorer = scored_by or objective
    return [scorer.regret(search.optuna_search(objective, method, seed, n_trials=budget).best_so_far()[-1])
            for seed in seeds]


def test_tpe_beats_random_search_on_branin() -> None:
    branin = objectives.branin()
    check, delta, low, high = conformance.beats(QUALITY, final_regrets(branin, "tpe", range(6), 40),
                                                final_regrets(branin, "random", range(6), 40),
                                                candidate_label="tpe", baseline_label="random")
    assert check.passed and delta < 0 and high < 0, check.detail


@pytest.mark.breaks("tuning.quality.<function>.tpe_beats_random")
def test_quality_check_catches_a_sampler_searching_the_wrong_direction() -> None:
    """Planted bug: TPE run with direction=maximize on a loss; its 'best' is scored honestly."""
    branin = objectives.branin()
    flipped = dataclasses.replace(branin, direction="maximize")
    check, *_ = conformance.beats(QUALITY, final_regrets(flipped, "tpe", range(6), 40, scored_by=branin),
                                  final_regrets(branin, "random", range(6), 40),
                                  candidate_label="tpe", baseline_label="random")
    assert not check.passed


@pytest.mark.breaks("tuning.quality.<function>.tpe_beats_random")
def test_quality_check_does_not_pass_two_identical_methods() -> None:
    branin = objectives.branin()
    same = final_regrets(branin, "random", range(5), 20)
    assert not conformance.beats(QUALITY, same, same, candidate_label="a", baseline_label="b")[0].passed
    with pytest.raises(ValueError, match="same seeds"):
        conformance.beats(QUALITY, same, same[:2], candidate_label="a", baseline_label="b")


def test_optimize_honours_n_trials_and_timeout() -> None:
    curve = objectives.learning_curve()
    study = studies.create_study(curve, sampler=studies.make_sampler("random", 0))
    assert len(studies.optimize(study, curve, n_trials=5).trials) == 5

    def slow(params, report):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return 0.0

    slow_objective = dataclasses.replace(curve, fn=slow)
    study = studies.create_study(slow_objective, sampler=studies.make_sampler("random", 0))
    studies.optimize(study, slow_objective, n_trials=10_000, timeout=0.3)
    assert 1 <= len(study.trials) < 100
    with pytest.raises(ValueError, match="unbounded"):
        studies.optimize(study, curve)


def test_best_so_far_and_search_runs_carry_pruned_trials_forward() -> None:
    assert studies.best_so_far([None, 3.0, None, 1.0, 2.0], "minimize").tolist()[1:] == [3.0, 3.0, 1.0, 1.0]
    run = search.SearchRun("x", 0, "maximize", values=[0.5, 0.9, 0.7], finished_s=[1.0, 2.0, 3.0])
    assert run.time_to(0.8) == 2.0 and run.time_to(0.95) is None
    at = run.best_at(__import__("numpy").array([0.5, 1.0, 2.5, 9.0]))
    assert str(at[0]) == "nan" and at[1:].tolist() == [0.5, 0.9, 0.9]


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        studies.make_sampler("cmaes", 0)
    with pytest.raises(ValueError, match="unknown pruner"):
        studies.make_pruner("hyperband")
    with pytest.raises(ValueError, match="unknown storage"):
        studies.open_storage("redis", tmp_path)
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.get("rosenbrock")
    assert studies.storage_url("postgresql://u@db/optuna", tmp_path) == "postgresql://u@db/optuna"


def test_study_plots_are_written_as_png_files(tmp_path: Path) -> None:
    study, _ = conformance.hopeless_half_study(pruning_objective(epochs=2), "median", 6, seed=0)
    written = visualize.save_study_plots(study, tmp_path, "digits")
    assert {p.name for p in written} == {"digits-history.png", "digits-importances.png", "digits-intermediate.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
