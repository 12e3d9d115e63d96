"""Calibrated A/A floors: the floor an A/A comparison stays under, stored per machine and
used by the gate, which says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from suite.calibration import aa_floor, calibrate, floors_for
from suite.compare import Verdict, gate
from suite.errors import SuiteError
from tests.factories import record, runs_of


def test_the_floor_covers_the_a_a_effects_it_was_computed_from() -> None:
    rng = np.random.default_rng(3)
    values = list(np.exp(rng.normal(np.log(0.01), 0.05, 16)))
    floor, spread, by_ratio = aa_floor(values, 3)
    assert by_ratio and spread == pytest.approx(np.std(np.log(values), ddof=1))
    # fresh A/A comparisons of 3 runs per side from the same distribution stay under it ~99% of the time
    fresh = rng.normal(0, 0.05, (4000, 6))
    exceed = np.mean(np.abs(fresh[:, :3].mean(1) - fresh[:, 3:].mean(1)) > floor)
    assert exceed < 0.05
    assert aa_floor(values, 8)[0] < floor  # more runs per side: a smaller floor


def test_signed_values_calibrate_by_difference() -> None:
    floor, _, by_ratio = aa_floor([-0.01, 0.0, 0.01, -0.02, 0.02, 0.0], 2)
    assert not by_ratio and floor > 0


def test_calibration_file_round_trips_and_the_gate_uses_it(tmp_path: Path) -> None:
    noisy = record(runs_of(0.010, seed=5, runs=8, between=0.05))
    path = calibrate([noisy], tmp_path)
    stored = json.loads(path.read_text())
    assert stored["machine_id"] == "machine-a" and "fam.tech|" + "h" * 16 + "|step_time" in stored["entries"]
    floors = floors_for(tmp_path, "machine-a")
    floor = floors[("fam.tech", "h" * 16, "step_time")]
    assert floor.runs == 8 and floor.at(3) > floor.at(8) and floor.at(100) == floor.at(8)
    base, cur = record(runs_of(0.010, seed=1, between=0.002)), record(runs_of(0.0106, seed=2, between=0.002))
    row = next(c for c in gate([base], [cur], floors=floors).comparisons if c.metric == "step_time")
    assert row.threshold_source == "calibrated" and row.threshold > math.log(1.05)
    assert row.verdict is not Verdict.regressed
    assert floors_for(tmp_path, "another-machine") == {}


def test_a_broken_calibration_file_is_a_named_error(tmp_path: Path) -> None:
    (tmp_path / "machine-a.json").write_text("{not json")
    with pytest.raises(SuiteError, match="machine-a.json: not valid JSON"):
        floors_for(tmp_path, "machine-a")


def _counted(per_call: float, jitter: int = 0) -> list:
    """One counted run's metrics: two dumps of five calls, as callgrind writes them."""
    from suite import instructions

    return instructions.metrics([instructions.Dump("", 5, round(per_call * 5) + jitter + i) for i in range(2)])


@pytest.mark.parametrize("jitters", [(0, 3, -2, 5, 1, -4, 2, 0), (0,) * 8])  # calibrated runs that all agree: spread 0
def test_one_counted_run_per_side_is_judged_with_the_calibrated_spread(tmp_path: Path, jitters: tuple) -> None:
    """`ab --count instructions --rounds 1`: the spread between runs comes from the
    machine's calibration (runs under load included), so a 1% change is a verdict and an
    A/A pair is not."""
    from suite import instructions, stats
    from suite.compare import Comparison

    steps = [0.01] * 50
    runs = [stats.combine_runs([m]) for m in _counted(7_940_000, 0)]
    calibrated = [stats.combine_runs([_counted(7_940_000, jitter)[0] for jitter in jitters])]
    # Counted under a hog: times from those runs are not taken, counts are (load cannot move them).
    calibrate([record([np.array(steps)] * 8, extra_metrics=calibrated, oversubscribed=[True] * 8)], tmp_path)
    floors = floors_for(tmp_path, "machine-a")
    assert floors[("fam.tech", "h" * 16, instructions.METRIC)].at(1) >= 0
    assert ("fam.tech", "h" * 16, "step_time") not in floors
    rules = instructions.rules_with_default([])

    def verdict(per_call: float, floors: dict) -> Comparison:
        head = [stats.combine_runs([m]) for m in _counted(per_call, 1)]
        rows = gate([record(steps, extra_metrics=runs)], [record(steps, extra_metrics=head)], rules,
                    floors=floors).comparisons
        return next(c for c in rows if c.metric == instructions.METRIC)

    assert verdict(7_940_000 * 1.01, floors).verdict is Verdict.regressed
    assert verdict(7_940_000, floors).verdict is Verdict.passed
    assert verdict(7_940_000 * 1.01, {}).verdict is Verdict.inconclusive  # one run, no calibration: unknown noise


def test_ab_takes_one_round_only_where_counts_are_calibrated() -> None:
    from suite.ab import count_calibrated
    from suite.compare import Floor
    from suite.schema import config_hash

    floor = Floor(thresholds={1: 1e-6}, spread=1e-6, runs=8)
    key = ("fam.tech", config_hash("fam.tech", {"model": "mlp"}))
    assert count_calibrated({(*key, "b8.instructions_per_call"): floor}, "fam.tech", {"model": "mlp"})
    assert not count_calibrated({(*key, "step_time"): floor}, "fam.tech", {"model": "mlp"})
    assert not count_calibrated({(*key, "instructions_per_call"): floor}, "fam.tech", {"model": "cnn"})
