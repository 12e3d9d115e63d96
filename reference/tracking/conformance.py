"""Conformance checks for tracking: what is logged reads back identical through the tool's
own reader, and a run killed mid-way leaves a readable, clearly unfinished run in a store
that still works. Each takes the tracker class under test, so a test can hand it a broken one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reference.tracking import interrupted, rundata
from reference.tracking.rundata import RunData
from suite import checks
from suite.schema import Check

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "track.<tool>.round_trip",
    "track.<tool>.interrupted.readable",
    "track.<tool>.interrupted.unfinished",
    "track.<tool>.interrupted.exact_prefix",
    "track.<tool>.interrupted.kept_flushed_steps",
    "track.<tool>.store_usable_after_kill",
)


def describe(run: RunData) -> str:
    steps = sum(len(series) for series in run.metrics.values())
    size = sum(len(data) for data in run.artifacts.values())
    return (f"{len(run.params)} params, {len(run.metrics)} metrics ({steps} values), "
            f"{len(run.artifacts)} artifacts ({size} bytes)")


def round_trip(name: str, tracker_class: Any, logged: RunData, read: RunData) -> Check:
    """Everything logged (params, every metric step, artifact bytes, summary, the model's
    weights or graph, the finished state) comes back, in the tool's stored representation."""
    stored = tracker_class.as_stored(logged)
    differences = rundata.differences(stored, read, compare_model=stored.model is not None,
                                      compare_graph=bool(stored.graph_ops))
    return checks.holds(name, not differences, f"what was logged, as {tracker_class.tool} stores it",
                        "; ".join(differences[:6]) or f"identical: {describe(logged)}")


def sample_payload(seed: int, steps: int = 50) -> tuple[RunData, Any, Any]:
    """A run worth round-tripping: params of every type (an integral float too), metric
    series of awkward doubles, artifacts (JSON with CRLF and non-ASCII text, a real PNG,
    random bytes) and a model with an example input. Returns (run, model, example)."""
    import io
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from reference.training.models import build

    params = {"lr": 3e-4, "batch_size": 64, "optimizer": "adamw", "nesterov": False, "weight_decay": 1.0}
    metrics = rundata.sample_values(seed, ["loss", "accuracy", "grad/norm"], steps)
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([s for s, _ in metrics["loss"]], [v for _, v in metrics["loss"]])
    png = io.BytesIO()
    figure.savefig(png, format="png")
    plt.close(figure)
    artifacts = {
        "config.json": (json.dumps(params, indent=2, ensure_ascii=False) + "\r\n# réglages µ\r\n").encode(),
        "loss.png": png.getvalue(),
        "blob.bin": np.random.default_rng(seed).bytes(4096),
    }
    model = build("mlp", "tiny", seed)
    run = RunData(params=params, metrics=metrics, artifacts=artifacts, finished=True,
                  model=rundata.state_of(model), graph_ops=rundata.graph_fragments(model))
    return run, model, torch.zeros(2, 64)


def log_run(tracker: Any, run_name: str, run: RunData, model: Any = None, example: Any = None) -> None:
    """Log a whole RunData with any tracker (steps in order, then artifacts, model, finish)."""
    tracker.start(run_name, dict(run.params))
    steps = sorted({step for series in run.metrics.values() for step, _ in series})
    by_step = {step: {k: v for k, series in run.metrics.items() for s, v in series if s == step} for step in steps}
    for step in steps:
        tracker.log_metrics(step, by_step[step])
    for artifact, data in run.artifacts.items():
        tracker.log_artifact(artifact, data)
    if model is not None:
        tracker.log_model(model, example)
    if run.finished:
        tracker.finish()
    else:
        tracker.flush()


def interrupted_run(name: str, tracker_class: Any, killed: interrupted.Interrupted, seed: int) -> list[Check]:
    """A run whose process was SIGKILLed: the store reads, the run is not marked finished,
    its metrics are an exact prefix of what was logged, and it kept every step it had
    flushed (where the tool's flush is durable; otherwise at least one step)."""
    try:
        read = tracker_class.read(killed.locator, with_model=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable store is the failure being checked
        return [checks.holds(f"{name}.readable", False, "the tool's own reader", f"{type(exc).__name__}: {exc}")]
    kept = min((len(series) for series in read.metrics.values()), default=0)
    expected = interrupted.expected_prefix(seed, kept)
    as_stored = tracker_class.as_stored(expected)
    differences = rundata.differences(RunData(params=as_stored.params, metrics=as_stored.metrics),
                                      RunData(params=read.params, metrics=read.metrics),
                                      compare_model=False, compare_graph=False)
    must_keep = killed.flushed if tracker_class.durable_flush else 1
    return [
        checks.holds(f"{name}.readable", True, "the tool's own reader", describe(read)),
        checks.holds(f"{name}.unfinished", not read.finished, "no finish was ever called",
                     f"read back as {'finished' if read.finished else 'unfinished'}"),
        checks.holds(f"{name}.exact_prefix", not differences and kept > 0,
                     "the seeded stream the killed process logged",
                     "; ".join(differences[:4]) or f"first {kept} steps identical"),
        checks.at_least(f"{name}.kept_flushed_steps", kept, must_keep,
                        "steps flushed before the kill" if tracker_class.durable_flush
                        else f"{tracker_class.tool} has no durable flush: at least one step",
                        f"{kept} steps kept of {killed.flushed} flushed when killed"),
    ]


def store_usable(name: str, tracker_class: Any, root: Path, seed: int) -> Check:
    """After the kill, the same store takes a new run that round-trips: it is not corrupt."""
    run = interrupted.expected_prefix(seed, 3)
    run.finished = True
    try:
        tracker = tracker_class(root)
        log_run(tracker, "after-interruption", run)
        differences = rundata.differences(tracker_class.as_stored(run), tracker_class.read(tracker.locator()),
                                          compare_model=False, compare_graph=False)
    except Exception as exc:  # noqa: BLE001 - a store that refuses new runs is the failure being checked
        differences = [f"{type(exc).__name__}: {exc}"]
    return checks.holds(name, not differences, "a new run in the same store after the kill",
                        "; ".join(differences[:4]) or "new run logged and read back")
