"""mlsuite result records as tracked runs, so benchmark history shows up in the tracker a
team already uses (`mlsuite run --track mlflow|tensorboard|wandb`).

One record becomes one run: params are the scenario's params, the record's identity
(scenario, profile, status, config hash, git commit) and its environment fingerprint;
metrics (at step 0) are each metric's value, median, CI bounds, n and claimed percentiles,
each conformance verdict (1 = passed) with its observed value, and the duration; the full
record is attached as record.json.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reference.tracking import trackers
from reference.tracking.rundata import RunData
from suite.sinks import register_sink

if TYPE_CHECKING:
    from suite.schema import Record

MAX_PARAM_CHARS = 500  # MLflow's per-param limit is 6000; the full text is in record.json
RECORD_ARTIFACT = "record.json"


def metric_key(name: str) -> str:
    """Keys every tool accepts (MLflow allows letters, digits, _ - . space : /)."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def _param_value(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]


def record_params(record: Record) -> dict[str, Any]:
    env = record.env
    params: dict[str, Any] = {
        "scenario": record.scenario, "profile": record.profile, "status": record.status.value,
        "reason": record.reason, "config_hash": record.config_hash, "source_hash": record.source_hash,
        "run_id": record.run_id, "time_utc": record.time_utc, "suite_version": record.suite_version,
        "git.commit": record.git.commit, "git.dirty": record.git.dirty,
    }
    params.update({f"param.{k}": v for k, v in record.params.items()})
    params.update({f"env.{k}": v for k, v in env.model_dump(exclude={"packages", "threads"}).items()})
    params.update({f"env.packages.{k}": v for k, v in env.packages.items()})
    params.update({f"env.threads.{k}": v for k, v in env.threads.items()})
    params.update({f"provenance.{k}": v for k, v in record.provenance.items() if k != "traceback"})
    return {metric_key(k): _param_value(v) for k, v in params.items() if v is not None}


def record_metrics(record: Record) -> dict[str, float]:
    values: dict[str, float] = {"duration_s": record.duration_s}
    for m in record.metrics:
        values.update({m.name: m.value, f"{m.name}.median": m.median, f"{m.name}.ci_low": m.ci_low,
                       f"{m.name}.ci_high": m.ci_high, f"{m.name}.n": float(m.n)})
        values.update({f"{m.name}.p{p.q:g}": p.value for p in m.percentiles if p.claimed})
    for c in record.checks:
        values[f"check.{c.name}"] = 1.0 if c.passed else 0.0
        if c.observed is not None:
            values[f"check.{c.name}.observed"] = c.observed
    return {metric_key(k): float(v) for k, v in values.items() if math.isfinite(v)}


def record_run(record: Record) -> RunData:
    """What a record's run holds: its params, its metrics at step 0, and the record itself."""
    return RunData(params=record_params(record), metrics={k: [(0, v)] for k, v in record_metrics(record).items()},
                   artifacts={RECORD_ARTIFACT: record.model_dump_json(indent=2).encode()}, finished=True)


def run_name(record: Record) -> str:
    return f"{record.scenario}-{record.config_hash}-{record.run_id}"


def _log(tracker: Any, record: Record) -> dict[str, str]:
    run = record_run(record)
    tracker.start(run_name(record), run.params)
    tracker.log_metrics(0, {k: series[0][1] for k, series in run.metrics.items()})
    for name, data in run.artifacts.items():
        tracker.log_artifact(name, data)
    tracker.finish()
    return tracker.locator()


def log_record_mlflow(record: Record, *, root: Path, experiment: str = "mlsuite") -> dict[str, str]:
    """One MLflow run in experiment `experiment` of the sqlite store under root."""
    return _log(trackers.create("mlflow", root, experiment=experiment), record)


def log_record_tensorboard(record: Record, *, root: Path) -> dict[str, str]:
    """One TensorBoard run directory, root/<scenario>-<config hash>-<run id>."""
    return _log(trackers.create("tensorboard", root), record)


def log_record_wandb(record: Record, *, root: Path, project: str = "mlsuite") -> dict[str, str]:
    """One offline W&B run under root (upload later with `wandb sync` if wanted)."""
    return _log(trackers.create("wandb", root, project=project), record)


SINKS = {"mlflow": log_record_mlflow, "tensorboard": log_record_tensorboard, "wandb": log_record_wandb}
for _tool, _sink in SINKS.items():
    register_sink(_tool, _sink)  # `mlsuite run --track <tool>`


def log_record(tool: str, record: Record, **options: Any) -> dict[str, str]:
    """Log one record to `tool` (mlflow, tensorboard or wandb); options go to the tool's
    function (root: the directory the tool's store lives in). Returns the run's locator."""
    try:
        sink = SINKS[tool]
    except KeyError:
        raise ValueError(f"unknown tracking tool {tool!r}; choose {', '.join(SINKS)}") from None
    return sink(record, **options)
