"""Conformance checks for tuning: each turns what a technique promises into a `Check`
that a broken implementation fails (tests plant those bugs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reference.tuning import objectives, studies
from reference.tuning.objectives import Objective
from reference.tuning.space import Float, Space, grid, outside
from reference.tuning.studies import TrialRecord
from suite import checks, stats
from suite.schema import Check

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "tuning.optuna.<storage>.same_seed_same_trials",
    "tuning.optuna.<storage>.matches_in_memory",
    "tuning.optuna.pruning.bad_pruned_by_step_<step>",
    "tuning.optuna.pruning.best_not_pruned",
    "tuning.optuna.workers.<storage>.trial_count",
    "tuning.optuna.workers.<storage>.numbers_unique",
    "tuning.optuna.workers.<storage>.no_lost_results",
    "tuning.quality.<function>.tpe_beats_random",
    "tuning.ray.asha.stops_on_rungs",
    "tuning.ray.asha.stopped_early",
    "tuning.ray.cluster_stopped",
    "tuning.anytime.ray_cluster_stopped",
    "tuning.sweep.ray_cluster_stopped",
    "tuning.sweep.<method>.trial_count",
    "tuning.sweep.<method>.values_in_space",
    "tuning.sweep.<method>.grid_points_once",
    "tuning.optuna.storage.<storage>.trial_count",
    "tuning.optuna.storage.<storage>.numbers_unique",
    "tuning.optuna.storage.<storage>.no_lost_results",
    "tuning.optuna.failover.<storage>.killed_trial_left_running",
    "tuning.optuna.failover.<storage>.stale_trial_failed",
    "tuning.optuna.failover.<storage>.retried_with_same_params",
    "tuning.optuna.failover.<storage>.study_goes_on",
    "tuning.ray.cluster.trials_on_every_node",
    "tuning.ray.cluster.asha.stops_on_rungs",
    "tuning.ray.cluster.asha.stopped_early",
    "tuning.ray.cluster.nothing_left_running",
)

REGRET_FLOOR = 1e-12  # log10 of a zero regret would be -inf
# The pruning check's workload: digits trials alternating a good learning rate and a hopeless
# one (still at chance after two epochs); the pruner runs 2 startup trials, prunes from step 1.
PRUNER_STARTUP, GOOD_LR, HOPELESS_LR, PRUNED_BY_STEP = 2, 3e-3, 1e-6, 2


def _outcome(record: TrialRecord) -> tuple[Any, ...]:
    """Everything but timing: what must repeat exactly under the same seed."""
    return record.number, record.state, record.params, record.value, record.intermediate


def reproducible(name: str, first: Sequence[TrialRecord], second: Sequence[TrialRecord],
                 best_first: float, best_second: float) -> Check:
    """Same seed, same storage kind: the same trials in the same order and the same best value."""
    a, b = [_outcome(r) for r in first], [_outcome(r) for r in second]
    differing = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    same = a == b and best_first == best_second
    if same:
        detail = f"{len(a)} trials identical (params, values, intermediate values); best {best_first!r}"
    elif differing is not None:
        detail = f"trial {differing} differs: {a[differing]} vs {b[differing]}"
    else:
        detail = f"{len(a)} vs {len(b)} trials; best {best_first!r} vs {best_second!r}"
    return checks.holds(name, same, "a second run with the same seed", detail)


def hopeless_half_objective(epochs: int, seed: int = 0) -> Objective:
    """The digits objective with its learning-rate range widened down to the hopeless rate."""
    space = {**objectives.DIGITS_SPACE, "lr": Float(HOPELESS_LR, objectives.DIGITS_LR.high, log=True)}
    return objectives.digits_objective(epochs=epochs, seed=seed, space=space)


def hopeless_half_study(objective: Objective, pruner_name: str, trials: int, seed: int) -> tuple[Any, set[int]]:
    """Odd-numbered trials get the hopeless learning rate, even ones the good one (the other
    parameters are sampled); returns the finished study and the hopeless trial numbers."""
    study = studies.create_study(objective, sampler=studies.make_sampler("random", seed),
                                 pruner=studies.make_pruner(pruner_name, startup_trials=PRUNER_STARTUP))
    hopeless = {number for number in range(trials) if number % 2 == 1}
    for number in range(trials):
        study.enqueue_trial({"lr": HOPELESS_LR if number in hopeless else GOOD_LR})
    studies.optimize(study, objective, n_trials=trials)
    return study, hopeless


def pruned_bad_half(name: str, trials: Sequence[TrialRecord], bad: set[int], *, startup_trials: int,
                    by_step: int) -> list[Check]:
    """Every clearly bad trial after the pruner's startup trials is pruned no later than
    `by_step`; the best trial was not pruned (the pruner does not throw away the winner)."""
    judged = [t for t in trials if t.number >= startup_trials and t.number in bad]
    late = [t.number for t in judged
            if t.state != "PRUNED" or max((s for s, _ in t.intermediate), default=0) > by_step]
    stopped = len(judged) - len(late)
    complete = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    best = max(complete, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]
    return [
        checks.at_least(f"{name}.bad_pruned_by_step_{by_step}", stopped / max(len(judged), 1), 1.0,
                        f"{len(judged)} clearly bad trials after {startup_trials} startup trials",
                        f"not pruned by step {by_step}: {late}" if late else "all pruned in time"),
        checks.holds(f"{name}.best_not_pruned", best is not None and best.number not in bad,
                     "the best completed trial is a good one",
                     f"best trial {best.number if best else None} value {best.value if best else None}"),
    ]


def asha_stops_at_rungs(name: str, stops: Sequence[int], rungs: Sequence[int], max_t: int) -> list[Check]:
    """ASHA only stops a trial at a rung (or at max_t), and it does stop some early."""
    off_rung = sorted({s for s in stops if s not in rungs})
    early = sum(1 for s in stops if s < max_t)
    return [
        checks.holds(f"{name}.stops_on_rungs", not off_rung and bool(stops), f"rungs {list(rungs)}",
                     f"trials stopped at iterations {sorted(stops)}" + (f"; off-rung {off_rung}" if off_rung else "")),
        checks.at_least(f"{name}.stopped_early", early, 1, "at least one trial stopped before max_t",
                        f"{early} of {len(stops)} trials stopped before {max_t}"),
    ]


def shared_study_complete(name: str, trials: Sequence[TrialRecord], reported: Sequence[Sequence[tuple[int, Any]]],
                          workers: int, trials_per_worker: int) -> list[Check]:
    """N workers x M trials on one storage: exactly N*M trials numbered 0..N*M-1, every one
    finished, and every value a worker computed is the value the storage holds."""
    expected = workers * trials_per_worker
    numbers = [t.number for t in trials]
    stored = {t.number: t.value for t in trials}
    worker_results = [item for per_worker in reported for item in per_worker]
    lost = [(n, v) for n, v in worker_results if n not in stored or stored[n] != v]
    unfinished = [t.number for t in trials if t.state not in ("COMPLETE", "PRUNED")]
    return [
        Check(name=f"{name}.trial_count", passed=len(trials) == expected, observed=len(trials),
              tolerance=expected, reference=f"{workers} workers x {trials_per_worker} trials",
              detail=f"{len(trials)} trials in the storage, {len(worker_results)} reported by workers"),
        checks.holds(f"{name}.numbers_unique", sorted(numbers) == list(range(expected)),
                     f"trial numbers 0..{expected - 1}, each once",
                     f"{len(numbers)} numbers, {len(set(numbers))} distinct, max {max(numbers, default=None)}"),
        checks.holds(f"{name}.no_lost_results", not lost and len(worker_results) == expected and not unfinished,
                     "every worker's result is in the storage, unchanged",
                     f"lost or changed: {lost[:5]}; unfinished: {unfinished[:5]}; "
                     f"{len(worker_results)} results reported"),
    ]


def log_regret(regrets: Sequence[float]) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(regrets, dtype=float), REGRET_FLOOR))


def beats(name: str, candidate: Sequence[float], baseline: Sequence[float], *, candidate_label: str,
          baseline_label: str) -> tuple[Check, float, float, float]:
    """The candidate's final regret is lower than the baseline's, paired by seed, on a log10
    scale: the paired-bootstrap 95% CI of (candidate - baseline) lies below zero.
    Returns the check and the mean difference with its CI."""
    if len(candidate) != len(baseline) or len(candidate) < 2:
        raise ValueError("need the same seeds (at least 2) for both methods")
    delta, low, high = stats.paired_bootstrap_delta(log_regret(baseline), log_regret(candidate))
    check = Check(name=name, passed=high < 0.0, observed=high, tolerance=0.0,
                  reference=f"{baseline_label}, paired by seed",
                  detail=f"log10 regret {candidate_label} - {baseline_label}: mean {delta:.3f} [{low:.3f}, "
                         f"{high:.3f}] over {len(candidate)} seeds (the upper CI bound must be below 0)")
    return check, delta, low, high


def sweep_conforms(name: str, space: Space, method: str, trials: Sequence[dict[str, Any]],
                   expected: int) -> list[Check]:
    """A sweep ran the trials it promised, every sampled value lies in its declared
    distribution, and a grid sweep visits each grid point once."""
    problems = [f"trial {i}: {p}" for i, params in enumerate(trials) for p in outside(space, params)]
    found = [
        checks.holds(f"{name}.trial_count", len(trials) == expected, f"{expected} trials (run_cap or grid size)",
                     f"{len(trials)} trials ran"),
        checks.holds(f"{name}.values_in_space", not problems, "the sweep config's distributions",
                     "; ".join(problems[:5]) or f"{len(trials)} trials inside the space"),
    ]
    if method == "grid":
        points = {repr(sorted(p.items())) for p in grid(space)}
        seen = [repr(sorted(p.items())) for p in trials]
        once = len(set(seen)) == len(seen) and set(seen) <= points and len(seen) == min(expected, len(points))
        found.append(checks.holds(f"{name}.grid_points_once", once, "the cartesian product of the values",
                                  f"{len(set(seen))} distinct of {len(points)} grid points, {len(seen)} trials"))
    return found


def nothing_left_running(name: str, reaped: int) -> Check:
    return checks.at_most(name, reaped, 0, "processes of the Ray session alive after ray.shutdown()",
                          f"{reaped} had to be killed")


def failover_checks(name: str, outcome: Any, complete_target: int) -> list[Check]:
    """A worker killed mid-trial (a `failover.FailoverOutcome`): its trial was left RUNNING,
    the heartbeat turned it FAIL, it was retried once with the same parameters, and the
    study still reached its target of completed trials without duplicate numbers."""
    retries = [n for n, origin in outcome.retried_from.items() if origin == outcome.killed_number]
    retried_ok = len(retries) == 1 and outcome.same_params[retries[0]] and outcome.states[retries[0]] == "COMPLETE"
    complete = sum(state == "COMPLETE" for state in outcome.states.values())
    by_survivors = [n for numbers in outcome.completed_by_survivors for n in numbers]
    return [
        checks.holds(f"{name}.killed_trial_left_running", outcome.state_after_kill == "RUNNING",
                     "Optuna: a killed process leaves its trial RUNNING",
                     f"trial {outcome.killed_number} was {outcome.state_after_kill} after the worker died "
                     f"(exit code {outcome.victim_exitcode})"),
        checks.holds(f"{name}.stale_trial_failed", outcome.states[outcome.killed_number] == "FAIL",
                     "heartbeat + grace period: the next worker fails a stale trial",
                     f"trial {outcome.killed_number} ended {outcome.states[outcome.killed_number]}"),
        checks.holds(f"{name}.retried_with_same_params", retried_ok, "RetryHeartbeatStaleTrialCallback(max_retry=1)",
                     f"retries of trial {outcome.killed_number}: {retries}, "
                     f"states {[outcome.states[n] for n in retries]}"),
        checks.holds(f"{name}.study_goes_on",
                     complete >= complete_target and len(by_survivors) == len(set(by_survivors)),
                     f"MaxTrialsCallback({complete_target}) on the survivors",
                     f"{complete} COMPLETE trials; survivors completed {len(by_survivors)} "
                     f"({len(set(by_survivors))} distinct numbers)"),
    ]


def trials_on_every_node(name: str, placement: dict[str, int], nodes: Sequence[str]) -> Check:
    """A cluster's trials ran on each of its nodes (not all on the head)."""
    idle = [node[:8] for node in nodes if placement.get(node, 0) == 0]
    return checks.holds(name, bool(nodes) and not idle, f"{len(nodes)} alive nodes",
                        f"trials per node {{{', '.join(f'{k[:8]}: {v}' for k, v in placement.items())}}}"
                        + (f"; no trial on {idle}" if idle else ""))
