"""Calibrated A/A noise floors, per machine x scenario x params x metric.

`mlsuite calibrate` runs the same code many times (K process runs, interleaved) and keeps,
for every metric, the between-run spread and the A/A floor: the 99th percentile of the
effect an A/A comparison at R runs per side shows on this machine, from many disjoint
splits of the K runs. `gate` and `ab` never use a threshold below that floor, and never a
between-run spread below the calibrated one (three quiet runs can look quieter than the
machine is). Stored as JSON under results/calibration/<machine id>.json.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from suite.compare import Floor
from suite.errors import SuiteError
from suite.schema import Record, read_text

FLOOR_QUANTILE = 99.0
SPLITS = 2000
SEED = 20261204
SIDES = (1, 2, 3, 4, 6, 8)  # runs per side that floors are kept for (1: counted `ab --rounds 1`)


def aa_floor(run_values: list[float], replicates: int) -> tuple[float, float, bool]:
    """(floor, spread, by_ratio) from K run values: the FLOOR_QUANTILE of |mean(log A) -
    mean(log B)| over random disjoint splits into two sides of `replicates` runs (with
    replacement when K < 2R), and the between-run standard deviation."""
    data = np.asarray(run_values, dtype=float)
    by_ratio = bool(np.all(data > 0))
    if by_ratio:
        data = np.log(data)
    spread = float(np.std(data, ddof=1))
    rng = np.random.default_rng(SEED)
    if data.size >= 2 * replicates:
        picks = np.argsort(rng.random((SPLITS, data.size)), axis=1)[:, : 2 * replicates]
    else:
        picks = rng.integers(0, data.size, (SPLITS, 2 * replicates))
    sides = data[picks]
    effects = np.abs(sides[:, :replicates].mean(axis=1) - sides[:, replicates:].mean(axis=1))
    return float(np.percentile(effects, FLOOR_QUANTILE)), spread, by_ratio


def calibration_path(folder: Path, machine_id: str) -> Path:
    return folder / f"{machine_id}.json"


def calibrate(records: list[Record], folder: Path) -> Path:
    """Store the floors of every replicated metric of these records (merging with what
    the machine's file already holds); returns the file."""
    if not records:
        raise SuiteError("nothing to calibrate: no records")
    machine = records[0].env.machine_id
    path = calibration_path(folder, machine)
    stored: dict[str, Any] = load(path) if path.exists() else {"machine_id": machine, "entries": {}}
    for record in records:
        for metric in record.metrics:
            values = [v for v, run in zip(metric.run_values, record.runs)
                      if not (run.oversubscribed and metric.moves_with_load)]
            if len(values) < 4 or not all(math.isfinite(v) for v in values):
                continue
            floors = {side: aa_floor(values, side) for side in SIDES}
            _, spread, by_ratio = floors[1]
            stored["entries"][_key(record.scenario, record.config_hash, metric.name)] = {
                "scenario": record.scenario, "params": record.params, "metric": metric.name,
                "thresholds": {str(side): found[0] for side, found in floors.items()}, "spread": spread,
                "by_ratio": by_ratio, "runs": len(values), "run_values": values, "commit": record.git.commit,
                "load_before": [run.load_before for run in record.runs],
            }
    stored.update(machine_id=machine, cpu_model=records[0].env.cpu_model, cpu_cores=records[0].env.cpu_cores,
                  updated_utc=datetime.now(UTC).isoformat(timespec="seconds"),
                  method=f"{FLOOR_QUANTILE:g}th percentile of |A/A effect| over {SPLITS} splits into two "
                         f"sides of R runs; spread = between-run standard deviation (log for positive metrics)")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def _key(scenario: str, config: str, metric: str) -> str:
    return f"{scenario}|{config}|{metric}"


def load(path: Path) -> dict:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise SuiteError(f"{path}: not an mlsuite calibration file")
    return data


def floors_for(folder: Path, machine_id: str) -> dict[tuple[str, str, str], Floor]:
    """The calibrated floors of this machine, keyed (scenario, config hash, metric); empty
    when the machine was never calibrated."""
    path = calibration_path(folder, machine_id)
    if not path.exists():
        return {}
    floors = {}
    for key, entry in load(path)["entries"].items():
        scenario, config, metric = key.split("|", 2)
        floors[(scenario, config, metric)] = Floor(
            thresholds={int(side): float(value) for side, value in entry["thresholds"].items()},
            spread=float(entry["spread"]), runs=int(entry["runs"]))
    return floors
