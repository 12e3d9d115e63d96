"""MLflow with a sqlite tracking store and an explicit artifact location (MLflow 3 refuses
a bare file store by default). Params, per-step metrics, artifacts and a PyTorch model,
read back through MlflowClient and mlflow.pytorch.load_model.

MLflow keeps params as strings; everything else round-trips exactly. A run that never
reached finish() stays RUNNING in the store: that is how an interrupted run shows.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network: no usage telemetry

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from reference.tracking.rundata import RunData, latest, state_of  # noqa: E402

MODEL_URI_TAG = "mlsuite.model_uri"


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


class MlflowTracker:
    tool = "mlflow"
    durable_flush = True  # synchronous log calls commit before returning; async ones once flush() returns

    def __init__(self, root: Path, *, experiment: str = "mlsuite", synchronous: bool = True) -> None:
        """`synchronous=False` uses MLflow's async logging: log calls queue and return."""
        root.mkdir(parents=True, exist_ok=True)
        self.uri = store_uri(root)
        self.client = MlflowClient(self.uri)
        self.synchronous = synchronous
        self.pending: list[Any] = []
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=(root / "artifacts").resolve().as_uri())
        self.run_id = ""

    def start(self, run_name: str, params: dict[str, Any]) -> None:
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        operation = self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()],
                                          synchronous=self.synchronous)
        if operation is not None and not self.synchronous:
            self.pending.append(operation)

    def flush(self) -> None:
        """Wait until every queued log call is in the store."""
        for operation in self.pending:
            operation.wait()
        self.pending.clear()

    def log_artifact(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as staging:
            path = Path(staging, name)
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path))

    def log_model(self, model: Any, example: Any) -> None:
        """mlflow.pytorch.log_model (torch.export format, so it needs an input example);
        pip requirements are given, not inferred, so logging does not scan the environment."""
        import torch

        mlflow.set_tracking_uri(self.uri)
        info = mlflow.pytorch.log_model(model, name="model", input_example=example.numpy(), run_id=self.run_id,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        self.client.set_tag(self.run_id, MODEL_URI_TAG, info.model_uri)

    def finish(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def locator(self) -> dict[str, str]:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    @staticmethod
    def as_stored(run: RunData) -> RunData:
        return RunData(params={k: str(v) for k, v in run.params.items()}, metrics=run.metrics,
                       artifacts=run.artifacts, summary=latest(run.metrics), finished=run.finished, model=run.model)

    @staticmethod
    def read(locator: dict[str, str], *, with_model: bool = True) -> RunData:
        client = MlflowClient(locator["tracking_uri"])
        run_id = locator["run_id"]
        run = client.get_run(run_id)
        metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                   for key in run.data.metrics}
        artifacts = {}
        with tempfile.TemporaryDirectory() as downloads:
            for entry in client.list_artifacts(run_id):
                if not entry.is_dir:
                    artifacts[entry.path] = Path(client.download_artifacts(run_id, entry.path, downloads)).read_bytes()
        model = None
        if with_model and MODEL_URI_TAG in run.data.tags:
            mlflow.set_tracking_uri(locator["tracking_uri"])
            model = state_of(mlflow.pytorch.load_model(run.data.tags[MODEL_URI_TAG]))
        return RunData(params=dict(run.data.params), metrics=metrics, artifacts=artifacts,
                       summary=dict(run.data.metrics), finished=run.info.status == "FINISHED", model=model)
