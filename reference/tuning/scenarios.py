"""The tuning techniques as suite scenarios. Imports nothing heavy at module level, so
`mlsuite list` works with only the core installed.

Plots a scenario writes for the report go to the harness's `ctx.artifact_dir`; their paths
are listed in the record's provenance["artifacts"].
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from suite import stats
from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.requirements import Cuda, Package, Processes, Requirement
from suite.schema import Check, Metric

# One process run per record: a run is a whole study of many trials, already repeated inside.
MAX_REPLICATES = 1
NOT_COUNTED = ("instruction counts: a whole study (accuracy against trials or wall time), not a timed in-process "
               "step")

OPTUNA = (Package("optuna"), Package("torch"), Package("scikit-learn", module="sklearn"),
          Package("matplotlib"))
RAY = (*OPTUNA, Package("ray"), Package("psutil"))
REGRET_CHECKPOINTS = (0.25, 0.5, 1.0)  # fractions of the trial budget reported as metrics
QUALITY_BUDGET = {"branin": 40, "hartmann6": 60, "digits": 30}  # trials per search
ANYTIME_ASHA = {"grace_period": 1, "reduction_factor": 3}
SWEEPS = Path(__file__).parent / "sweeps"
EPOCHS_PER_SWEEP_TRIAL = 3


def band(matrix: np.ndarray, x: np.ndarray) -> Any:
    """Median over seeds (rows) per column, with a bootstrap 95% CI; columns where any seed
    has no value yet are dropped."""
    from reference.tuning.visualize import Band

    keep = ~np.isnan(matrix).any(axis=0)
    columns = matrix[:, keep].T
    intervals = [stats.bootstrap_ci(column) for column in columns]
    return Band(x=x[keep].tolist(), centre=np.median(columns, axis=1).tolist(),
                low=[lo for lo, _ in intervals], high=[hi for _, hi in intervals])


class WorkDir:
    """A scratch directory per scenario run (storages, Ray results), removed with the object
    or at interpreter exit at the latest."""

    def make_workdir(self) -> Path:
        self.scratch = tempfile.TemporaryDirectory(prefix="mlsuite-tune-", ignore_cleanup_errors=True)
        self.workdir = Path(self.scratch.name)
        return self.workdir


@scenario("tuning.optuna", grid={"storage": ["memory", "sqlite", "journal"], "sampler": ["tpe", "random"],
                               "repeat_trials": [20]},
          profiles={"quick": {"sampler": ["tpe"]}}, requires=OPTUNA, timeout_s=600)
class TuneOptuna(WorkDir, Scenario):
    """Sampler + storage overhead per trial (Branin, so the objective costs microseconds),
    trials/s, and seeded reproducibility on this storage (and against in-memory)."""

    def setup(self, ctx: RunContext) -> None:
        from reference.tuning import objectives, studies

        self.objective = objectives.branin()
        self.make_workdir()
        (self.workdir / "timed").mkdir()
        storage = studies.open_storage(ctx.params["storage"], self.workdir / "timed")
        self.study = studies.create_study(self.objective, storage=storage, study_name="timed",
                                          sampler=studies.make_sampler(ctx.params["sampler"], ctx.seed))
        ctx.provenance.update(storage=ctx.params["storage"], sampler=ctx.params["sampler"], objective="branin")

    def step(self) -> None:
        from reference.tuning import studies

        studies.optimize(self.study, self.objective, n_trials=1)

    def measure(self, ctx: RunContext) -> list[Metric]:
        metrics, _ = ctx.time_steps(self.step, items_per_call=1, item_unit="trials", prefix="trial_")
        ctx.provenance["trials_in_study_after_timing"] = len(self.study.trials)
        return metrics

    def seeded_run(self, ctx: RunContext, storage_kind: str, label: str) -> Any:
        from reference.tuning import studies

        directory = self.workdir / label
        directory.mkdir()
        study = studies.create_study(self.objective, storage=studies.open_storage(storage_kind, directory),
                                     study_name=label, sampler=studies.make_sampler(ctx.params["sampler"], ctx.seed))
        studies.optimize(study, self.objective, n_trials=ctx.params["repeat_trials"])
        return studies.trial_records(study), study.best_value

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        storage = ctx.params["storage"]
        first, second = self.seeded_run(ctx, storage, "first"), self.seeded_run(ctx, storage, "second")
        found = [conformance.reproducible(f"tuning.optuna.{storage}.same_seed_same_trials", first[0], second[0],
                                          first[1], second[1])]
        if storage != "memory":
            memory = self.seeded_run(ctx, "memory", "memory")
            found.append(conformance.reproducible(f"tuning.optuna.{storage}.matches_in_memory", first[0], memory[0],
                                                  first[1], memory[1]))
        return found


@scenario("tuning.optuna.pruning", grid={"pruner": ["median"], "trials": [16], "epochs": [6]},
          profiles={"quick": {"trials": [10], "epochs": [4]}}, requires=OPTUNA, timeout_s=600)
class TuneOptunaPruning(Scenario):
    """MedianPruner on digits: half the trials are hopeless by step 2 and must be stopped
    there; compute saved; the same seed gives the same pruning decisions."""
    not_counted = NOT_COUNTED

    def setup(self, ctx: RunContext) -> None:
        from reference.tuning import conformance

        self.objective = conformance.hopeless_half_objective(ctx.params["epochs"], ctx.seed)
        self.objective.prepare()
        ctx.provenance.update(pruner=f"MedianPruner(n_startup_trials={conformance.PRUNER_STARTUP}, "
                                     f"n_warmup_steps=1)", good_lr=conformance.GOOD_LR,
                              hopeless_lr=conformance.HOPELESS_LR, threads_per_trial=1)

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import conformance, studies, visualize

        p = ctx.params
        started = time.perf_counter()
        self.study, self.bad = conformance.hopeless_half_study(self.objective, p["pruner"], p["trials"], ctx.seed)
        wall = time.perf_counter() - started
        self.records = studies.trial_records(self.study)
        epochs_run = sum(len(r.intermediate) for r in self.records)
        judged = [r for r in self.records if r.number in self.bad and r.number >= conformance.PRUNER_STARTUP]
        plots = visualize.save_study_plots(self.study, ctx.artifact_dir, "digits-median-pruner")
        ctx.provenance.update(artifacts=[str(path) for path in plots], best_params=self.study.best_params)
        return [
            stats.scalar("study_wall", "s", False, wall),
            stats.scalar("epochs_saved", "fraction", True, 1 - epochs_run / (p["trials"] * p["epochs"])),
            stats.proportion("bad_trials_pruned", [r.state == "PRUNED" for r in judged]),
            stats.summarize("trial_duration", "s", False, [r.duration_s for r in self.records]),
            stats.scalar("best_val_accuracy", "fraction", True, self.study.best_value),
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance, studies

        p = ctx.params
        again, _ = conformance.hopeless_half_study(self.objective, p["pruner"], p["trials"], ctx.seed)
        return [
            *conformance.pruned_bad_half("tuning.optuna.pruning", self.records, self.bad,
                                         startup_trials=conformance.PRUNER_STARTUP,
                                         by_step=conformance.PRUNED_BY_STEP),
            conformance.reproducible("tuning.optuna.pruning.same_seed_same_trials", self.records,
                                     studies.trial_records(again), self.study.best_value, again.best_value),
        ]


@scenario("tuning.optuna.workers", grid={"storage": ["sqlite", "journal"], "workers": [2, 4],
                                       "trials_per_worker": [8], "epochs": [3]},
          profiles={"quick": {"storage": ["sqlite"], "workers": [2], "trials_per_worker": [5]}},
          requires=OPTUNA, timeout_s=900)
class TuneOptunaWorkers(WorkDir, Scenario):
    """N worker processes share one study through its storage: exactly N*M trials, no
    duplicate numbers, no lost results; aggregate trials/s."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*OPTUNA, Processes(params["workers"])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import studies, workers

        p = ctx.params
        started = time.perf_counter()
        study, self.reported = workers.run_workers(
            storage=p["storage"], directory=self.make_workdir(), objective="digits", workers=p["workers"],
            trials_per_worker=p["trials_per_worker"], seed=ctx.seed, objective_options={"epochs": p["epochs"]})
        wall = time.perf_counter() - started
        self.records = studies.trial_records(study)
        first_start = min(t.datetime_start for t in study.trials if t.datetime_start)
        last_end = max(t.datetime_complete for t in study.trials if t.datetime_complete)
        ctx.provenance.update(start_method="spawn", sampler="tpe (seed + worker index)", threads_per_worker=1)
        return [
            stats.scalar("wall_incl_worker_start", "s", False, wall, kind="cold"),
            stats.scalar("trials_per_s", "trials/s", True,
                         len(self.records) / (last_end - first_start).total_seconds()),
            stats.summarize("trial_duration", "s", False, [r.duration_s for r in self.records]),
            stats.scalar("best_val_accuracy", "fraction", True, study.best_value),
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        p = ctx.params
        return conformance.shared_study_complete(f"tuning.optuna.workers.{p['storage']}", self.records, self.reported,
                                                 p["workers"], p["trials_per_worker"])


# digits trains 2 epochs per trial: with a short budget the hyperparameters matter, which is
# when a model-based sampler should earn its keep (at 5 epochs most configs reach ~97%).
@scenario("tuning.quality", grid={"function": ["branin", "hartmann6", "digits"], "seeds": [10], "epochs": [2]},
          profiles={"quick": {"seeds": [6]}},
          requires=OPTUNA, timeout_s=1800)
class TuneQuality(Scenario):
    """TPE against random search at a fixed trial budget, over several seeds: best-so-far
    regret curves with CIs, and whether TPE's final regret is lower (paired by seed)."""
    not_counted = NOT_COUNTED

    def setup(self, ctx: RunContext) -> None:
        from reference.tuning import objectives

        p = ctx.params
        options = {"epochs": p["epochs"], "seed": ctx.seed} if p["function"] == "digits" else {}
        self.objective = objectives.get(p["function"], **options)
        self.objective.prepare()
        self.budget = QUALITY_BUDGET[p["function"]]
        ctx.provenance.update(budget_trials=self.budget, regret="validation error" if p["function"] == "digits"
                              else f"value - known optimum {self.objective.optimum}")

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import search, visualize

        p = ctx.params
        seeds = [ctx.seed + s for s in range(p["seeds"])]
        curves = {}
        for method in ("tpe", "random"):
            runs = [search.optuna_search(self.objective, method, seed, n_trials=self.budget) for seed in seeds]
            curves[method] = np.array([[self.objective.regret(v) for v in run.best_so_far()] for run in runs])
        self.final = {method: curve[:, -1] for method, curve in curves.items()}
        x = np.arange(1, self.budget + 1, dtype=float)
        log_y = p["function"] != "digits"
        path = visualize.save_curves({m: band(c, x) for m, c in curves.items()},
                                     ctx.artifact_dir / "regret.png", log_y=log_y,
                                     title=f"{p['function']}: best-so-far regret, median and 95% CI "
                                           f"over {len(seeds)} seeds", xlabel="trial", ylabel="regret")
        ctx.provenance.update(artifacts=[str(path)],
                              median_regret_curves={m: np.median(c, axis=0).tolist() for m, c in curves.items()})
        metrics = []
        for method, curve in curves.items():
            for fraction in REGRET_CHECKPOINTS:
                at = max(1, int(round(fraction * self.budget)))
                metrics.append(stats.summarize(f"{method}.regret@{at}", "regret", False, curve[:, at - 1].tolist()))
        return metrics

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        check, delta, low, high = conformance.beats(f"tuning.quality.{ctx.params['function']}.tpe_beats_random",
                                                    self.final["tpe"].tolist(), self.final["random"].tolist(),
                                                    candidate_label="tpe", baseline_label="random")
        ctx.provenance["log10_regret_delta_tpe_minus_random"] = {"mean": delta, "ci": [low, high]}
        return [check]


@scenario("tuning.anytime", grid={"methods": ["tpe,random,asha"], "seeds": [5], "trials": [24], "epochs": [3],
                                "target": [0.96]},
          profiles={"quick": {"methods": ["tpe,random"], "seeds": [3], "trials": [12]}}, timeout_s=1800)
class TuneAnytime(WorkDir, Scenario):
    """Digits: best-so-far validation accuracy against wall time for TPE, random search
    and ASHA (Ray Tune), each run sequentially on one CPU so wall times compare; wall time
    to reach a target accuracy. (Whether TPE beats random is tuning.quality's claim.)"""
    not_counted = NOT_COUNTED

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return list(RAY if "asha" in params["methods"].split(",") else OPTUNA)

    def setup(self, ctx: RunContext) -> None:
        from reference.tuning import objectives

        self.objective = objectives.digits_objective(epochs=ctx.params["epochs"], seed=ctx.seed)
        self.objective.prepare()
        self.methods = ctx.params["methods"].split(",")
        unknown = set(self.methods) - {"tpe", "random", "asha"}
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from tpe, random, asha")
        ctx.provenance.update(concurrency=1, threads_per_trial=1,
                              asha={"max_t": ctx.params["epochs"], **ANYTIME_ASHA})

    def searches(self, ctx: RunContext, method: str) -> list[Any]:
        from reference.tuning import search

        p = ctx.params
        seeds = [ctx.seed + s for s in range(p["seeds"])]
        if method != "asha":
            return [search.optuna_search(self.objective, method, seed, n_trials=p["trials"]) for seed in seeds]
        from reference.tuning import ray_tune

        with ray_tune.local_cluster(num_cpus=1) as cluster:
            runs = [search.asha_search(self.objective, seed, n_trials=p["trials"], max_t=p["epochs"],
                                       storage_dir=self.workdir / f"asha-{seed}", **ANYTIME_ASHA) for seed in seeds]
        self.cluster = cluster
        return runs

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import visualize

        p = ctx.params
        self.make_workdir()
        self.runs = {method: self.searches(ctx, method) for method in self.methods}
        horizon = max(run.finished_s[-1] for runs in self.runs.values() for run in runs)
        times = np.linspace(0.0, horizon, 200)
        curves = {m: band(np.array([run.best_at(times) for run in runs]), times) for m, runs in self.runs.items()}
        path = visualize.save_curves(curves, ctx.artifact_dir / "best-so-far.png",
                                     title=f"digits: best validation accuracy so far ({p['seeds']} seeds)",
                                     xlabel="wall time (s), one CPU", ylabel="validation accuracy")
        ctx.provenance["artifacts"] = [str(path)]
        metrics = []
        for method, runs in self.runs.items():
            metrics.append(stats.summarize(f"{method}.best_val_accuracy", "fraction", True,
                                           [float(run.best_so_far()[-1]) for run in runs]))
            metrics.append(stats.summarize(f"{method}.search_wall", "s", False, [run.finished_s[-1] for run in runs]))
            metrics.append(stats.summarize(f"{method}.epochs_per_trial", "epochs", False,
                                           [float(np.mean(run.steps)) for run in runs]))
            reached = [run.time_to(p["target"]) for run in runs]
            metrics.append(stats.proportion(f"{method}.reached_target", [t is not None for t in reached]))
            hits = [t for t in reached if t is not None]
            if hits:
                metrics.append(stats.summarize(f"{method}.time_to_target", "s", False, hits))
        ctx.provenance["time_to_target_note"] = ("time_to_target summarises only the seeds that reached the "
                                                 "target; reached_target gives how many did")
        if hasattr(self, "cluster"):
            metrics.append(stats.scalar("ray_cluster_start", "s", False, self.cluster.start_s, kind="cold"))
        return metrics

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        if not hasattr(self, "cluster"):
            return []
        return [conformance.nothing_left_running("tuning.anytime.ray_cluster_stopped", self.cluster.reaped)]


@scenario("tuning.ray", grid={"num_samples": [18], "max_t": [9], "grace_period": [1], "reduction_factor": [3],
                            "num_cpus": [2], "cpus_per_trial": [1], "device": ["cpu"], "gpus_per_trial": [0.0]},
          profiles={"quick": {"num_samples": [9]},
                    "gpu": {"device": ["cuda"], "gpus_per_trial": [0.5], "num_samples": [36], "num_cpus": [4]}},
          requires=RAY, timeout_s=900)
class TuneRay(WorkDir, Scenario):
    """Ray Tune + ASHA on digits on a local cluster this scenario starts and stops: cluster
    start, trials/s, scheduling overhead per trial, and the promise that trials stop only
    at ASHA's rungs."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*RAY, Processes(params["num_cpus"]), *([Cuda()] if params["device"] == "cuda" else [])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import objectives, ray_tune

        p = ctx.params
        self.asha = ray_tune.Asha(max_t=p["max_t"], grace_period=p["grace_period"],
                                  reduction_factor=p["reduction_factor"])
        objective = objectives.digits_objective(epochs=p["max_t"], seed=ctx.seed, device=ctx.device)
        gpus = 1 if ctx.device == "cuda" else 0
        with ray_tune.local_cluster(num_cpus=p["num_cpus"], num_gpus=gpus) as self.cluster:
            self.outcome = ray_tune.run_tune(objective, num_samples=p["num_samples"], seed=ctx.seed,
                                             storage_dir=self.make_workdir(), scheduler=self.asha.scheduler(),
                                             cpus_per_trial=p["cpus_per_trial"], gpus_per_trial=p["gpus_per_trial"])
        trials = self.outcome.trials
        busy = sum(t.finished_at - t.started_at for t in trials)
        slots = p["num_cpus"] // p["cpus_per_trial"]
        if p["gpus_per_trial"]:
            slots = min(slots, int(gpus / p["gpus_per_trial"]))
        ctx.provenance.update(rungs=self.asha.rungs(), scheduler="ASHAScheduler", search="random (seeded)",
                              resources_per_trial={"cpu": p["cpus_per_trial"], "gpu": p["gpus_per_trial"]},
                              device=ctx.device, threads_per_trial=1)
        return [
            stats.scalar("cluster_start", "s", False, self.cluster.start_s, kind="cold"),
            stats.scalar("trials_per_s", "trials/s", True, len(trials) / self.outcome.wall_s),
            stats.scalar("overhead_per_trial", "s", False, max(self.outcome.wall_s * slots - busy, 0.0) / len(trials)),
            stats.summarize("trial_duration", "s", False, [t.finished_at - t.started_at for t in trials]),
            stats.scalar("epochs_saved", "fraction", True,
                         1 - sum(t.stopped_at for t in trials) / (len(trials) * p["max_t"])),
            stats.scalar("best_val_accuracy", "fraction", True, self.outcome.best("max").value),
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        return [
            *conformance.asha_stops_at_rungs("tuning.ray.asha", [t.stopped_at for t in self.outcome.trials],
                                             self.asha.rungs(), self.asha.max_t),
            conformance.nothing_left_running("tuning.ray.cluster_stopped", self.cluster.reaped),
        ]


@scenario("tuning.sweep", grid={"method": ["random", "grid", "bayes"], "backend": ["optuna", "ray"]},
          profiles={"quick": {"method": ["grid", "bayes"], "backend": ["optuna"]}}, requires=OPTUNA, timeout_s=900)
class TuneSweep(WorkDir, Scenario):
    """A W&B sweep config (reference/tuning/sweeps/digits-<method>.yaml) run locally through
    Optuna or Ray Tune: it runs the trials it promises, inside its declared space."""
    not_counted = NOT_COUNTED

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return list(RAY if params["backend"] == "ray" else OPTUNA)

    def setup(self, ctx: RunContext) -> None:
        from reference.tuning import sweep

        self.config_path = SWEEPS / f"digits-{ctx.params['method']}.yaml"
        self.sweep = sweep.load(self.config_path)
        ctx.provenance.update(sweep_config=str(self.config_path.relative_to(SWEEPS.parent.parent.parent)),
                              early_terminate=str(self.sweep.early_terminate))

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import objectives, sweep

        objective = objectives.digits_objective(epochs=EPOCHS_PER_SWEEP_TRIAL, seed=ctx.seed)
        objective.prepare()
        metrics = []
        started = time.perf_counter()
        if ctx.params["backend"] == "ray":
            from reference.tuning import ray_tune

            with ray_tune.local_cluster(num_cpus=2) as self.cluster:
                self.run = sweep.run_sweep(self.sweep, objective, backend="ray", seed=ctx.seed,
                                           storage_dir=self.make_workdir())
            metrics.append(stats.scalar("ray_cluster_start", "s", False, self.cluster.start_s, kind="cold"))
        else:
            self.run = sweep.run_sweep(self.sweep, objective, backend="optuna", seed=ctx.seed)
        wall = time.perf_counter() - started
        _, best = self.run.best()
        return [*metrics, stats.scalar("best_val_accuracy", "fraction", True, best),
                stats.scalar("trials_per_s", "trials/s", True, len(self.run.trials) / wall)]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        found = conformance.sweep_conforms(f"tuning.sweep.{ctx.params['method']}", self.sweep.space,
                                           self.sweep.method, [params for params, _ in self.run.trials],
                                           self.sweep.trial_count())
        if hasattr(self, "cluster"):
            found.append(conformance.nothing_left_running("tuning.sweep.ray_cluster_stopped", self.cluster.reaped))
        return found



class PostgresServer(Requirement):
    """PostgreSQL binaries this suite can start (and, under root, a user to run them as)."""

    def unmet(self) -> str | None:
        from reference.tuning import pgserver

        return pgserver.unavailable()


POSTGRES = (Package("psycopg2-binary", module="psycopg2"), PostgresServer())


def storage_requirements(storage: str) -> list[Requirement]:
    return [*OPTUNA, *(POSTGRES if storage == "postgres" else ())]


@contextmanager
def shared_storage(storage: str, ctx: RunContext) -> Iterator[str]:
    """What workers are handed: a storage kind, or for "postgres" the URL of a private
    server started for this run (its start-up cost goes to provenance)."""
    if storage != "postgres":
        yield storage
        return
    from reference.tuning import pgserver

    with pgserver.postgres_server() as server:
        ctx.provenance["postgres"] = {"url": server.redacted_url, "start_s": server.start_s}
        yield server.url


@scenario("tuning.optuna.storage", grid={"storage": ["sqlite", "journal", "postgres"], "workers": [1, 2, 4],
                                       "trials_per_worker": [40]},
          profiles={"quick": {"workers": [2], "trials_per_worker": [20]}}, requires=OPTUNA, timeout_s=900)
class TuneOptunaStorage(WorkDir, Scenario):
    """What the shared storage itself costs: N worker processes run a microsecond objective
    (Branin) with random search on one study, so trials/s and the per-trial latency are the
    storage's round trips; no trial may be lost or numbered twice."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*storage_requirements(params["storage"]), Processes(params["workers"])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import studies, workers

        p = ctx.params
        with shared_storage(p["storage"], ctx) as storage:
            started = time.perf_counter()
            study, self.reported = workers.run_workers(storage=storage, directory=self.make_workdir(),
                                                       objective="branin", workers=p["workers"], sampler="random",
                                                       trials_per_worker=p["trials_per_worker"], seed=ctx.seed)
            wall = time.perf_counter() - started
            self.records = studies.trial_records(study)
            first_start = min(t.datetime_start for t in study.trials if t.datetime_start)
            last_end = max(t.datetime_complete for t in study.trials if t.datetime_complete)
        ctx.provenance.update(start_method="spawn", sampler="random (seed + worker index)", objective="branin")
        found = [stats.scalar("wall_incl_worker_start", "s", False, wall, kind="cold"),
                 stats.scalar("trials_per_s", "trials/s", True,
                              len(self.records) / (last_end - first_start).total_seconds()),
                 stats.summarize("trial_latency", "s", False, [r.duration_s for r in self.records])]
        if "postgres" in ctx.provenance:
            found.append(stats.scalar("server_start", "s", False, ctx.provenance["postgres"]["start_s"], kind="cold"))
        return found

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        p = ctx.params
        return conformance.shared_study_complete(f"tuning.optuna.storage.{p['storage']}", self.records, self.reported,
                                                 p["workers"], p["trials_per_worker"])


@scenario("tuning.optuna.failover", grid={"storage": ["sqlite", "postgres"], "survivors": [2],
                                        "complete_target": [12]},
          profiles={"quick": {}}, requires=OPTUNA, timeout_s=600)
class TuneOptunaFailover(WorkDir, Scenario):
    """A worker SIGKILLed inside a trial: its trial is left RUNNING, the RDB heartbeat marks
    it FAIL, RetryHeartbeatStaleTrialCallback re-runs its parameters, and the surviving
    workers still complete the study. Time from the kill to the FAIL mark."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*storage_requirements(params["storage"]), Processes(params["survivors"])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import failover, studies

        p = ctx.params
        heartbeat = studies.Heartbeat()
        with shared_storage(p["storage"], ctx) as storage:
            self.outcome = failover.kill_one_worker(storage=storage, directory=self.make_workdir(),
                                                    heartbeat=heartbeat, survivors=p["survivors"],
                                                    complete_target=p["complete_target"], seed=ctx.seed)
        ctx.provenance.update(heartbeat={"interval_s": heartbeat.interval_s, "grace_s": heartbeat.grace_s,
                                         "max_retry": heartbeat.max_retry},
                              killed_trial=self.outcome.killed_number, states=self.outcome.states)
        return [stats.scalar("kill_to_fail_mark", "s", False, self.outcome.wait_s)]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        return conformance.failover_checks(f"tuning.optuna.failover.{ctx.params['storage']}", self.outcome,
                                           ctx.params["complete_target"])


@scenario("tuning.ray.cluster", grid={"nodes": [2], "cpus_per_node": [1], "num_samples": [9], "max_t": [9]},
          profiles={"quick": {}}, requires=RAY, timeout_s=900)
class TuneRayCluster(WorkDir, Scenario):
    """Ray Tune + ASHA on digits on a real cluster: `ray start --head` and worker nodes
    joining it over loopback. Cluster start, trial placement per node, per-trial overhead;
    trials ran on every node and stopped only at ASHA's rungs; nothing left running."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*RAY, Processes(params["nodes"] * params["cpus_per_node"])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.tuning import objectives, ray_cluster, ray_tune

        p = ctx.params
        self.asha = ray_tune.Asha(max_t=p["max_t"])
        objective = objectives.digits_objective(epochs=p["max_t"], seed=ctx.seed)
        with ray_cluster.loopback_cluster(nodes=p["nodes"], cpus_per_node=p["cpus_per_node"]) as self.cluster:
            listening = ray_cluster.listening_addresses(self.cluster.session_root)
            self.outcome = ray_tune.run_tune(objective, num_samples=p["num_samples"], seed=ctx.seed,
                                             storage_dir=self.make_workdir(), scheduler=self.asha.scheduler())
        trials = self.outcome.trials
        self.placement = {node: sum(t.node == node for t in trials) for node in self.cluster.node_ids}
        busy = sum(t.finished_at - t.started_at for t in trials)
        slots = p["nodes"] * p["cpus_per_node"]
        ctx.provenance.update(rungs=self.asha.rungs(), address=self.cluster.address, listening=sorted(listening),
                              placement={f"node{i}{' (head)' if i == 0 else ''}": self.placement[n]
                                         for i, n in enumerate(self.cluster.node_ids)})
        return [
            stats.scalar("head_start", "s", False, self.cluster.head_s, kind="cold"),
            stats.scalar("cluster_start", "s", False, self.cluster.start_s, kind="cold"),
            *(stats.scalar(f"trials_on_node{i}", "trials", True, self.placement[n])
              for i, n in enumerate(self.cluster.node_ids)),
            stats.scalar("trials_per_s", "trials/s", True, len(trials) / self.outcome.wall_s),
            stats.scalar("overhead_per_trial", "s", False, max(self.outcome.wall_s * slots - busy, 0.0) / len(trials)),
            stats.scalar("epochs_saved", "fraction", True,
                         1 - sum(t.stopped_at for t in trials) / (len(trials) * p["max_t"])),
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.tuning import conformance

        return [
            conformance.trials_on_every_node("tuning.ray.cluster.trials_on_every_node", self.placement,
                                             self.cluster.node_ids),
            *conformance.asha_stops_at_rungs("tuning.ray.cluster.asha", [t.stopped_at for t in self.outcome.trials],
                                             self.asha.rungs(), self.asha.max_t),
            conformance.nothing_left_running("tuning.ray.cluster.nothing_left_running", self.cluster.reaped),
        ]
