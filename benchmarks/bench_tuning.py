"""asv benchmarks for the tuning techniques (the scenarios of reference/tuning)."""

from __future__ import annotations

from .common import axis, prepared

STORAGES, SAMPLERS = axis("tuning.optuna", "storage"), axis("tuning.optuna", "sampler")


class OptunaTrial:
    """One Optuna trial on Branin: what the sampler and the storage cost per trial."""

    params = (STORAGES, SAMPLERS)
    param_names = ["storage", "sampler"]

    def setup(self, storage: str, sampler: str) -> None:
        self.scenario = prepared("tuning.optuna", storage=storage, sampler=sampler)

    def time_trial(self, storage: str, sampler: str) -> None:
        self.scenario.step()

    def peakmem_trial(self, storage: str, sampler: str) -> None:
        self.scenario.step()


class TunerQuality:
    """Final regret of TPE and random search on Branin at 40 trials (median of 5 seeds):
    a rise is a regression in the sampler, not noise in a clock."""

    params = SAMPLERS
    param_names = ["sampler"]
    timeout = 300

    def setup(self, sampler: str) -> None:
        from suite.requirements import Package

        if (reason := Package("optuna").unmet()) is not None:
            raise NotImplementedError(reason)

    def track_final_regret(self, sampler: str) -> float:
        import numpy as np

        from reference.tuning import objectives, search

        branin = objectives.branin()
        runs = [search.optuna_search(branin, sampler, seed, n_trials=40) for seed in range(5)]
        return float(np.median([branin.regret(run.best_so_far()[-1]) for run in runs]))

    track_final_regret.unit = "regret"  # type: ignore[attr-defined]
