"""Weights & Biases in offline mode: nothing leaves the machine. Config, per-step logs,
summary, file artifacts and the model (a state-dict artifact), read back through wandb's
own transaction-log reader (`wandb leet inspect --json`), since offline runs have no API
server to ask.

The run's .wandb log gets an exit record only from finish(): an interrupted run reads back
as unfinished, with every record written before the interruption.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import wandb

from reference.tracking.rundata import RunData, latest

READ_TIMEOUT_S = 120


def artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    return re.sub(r"[^\w.-]", "-", name)


class WandbTracker:
    tool = "wandb"
    durable_flush = False  # wandb-core writes its log in 32 KiB blocks: a crash loses the tail

    def __init__(self, root: Path, *, project: str = "mlsuite") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.project = root, project

    def start(self, run_name: str, params: dict[str, Any]) -> None:
        # artifact staging copies stay under root instead of the user's ~/.local/share/wandb
        os.environ["WANDB_DATA_DIR"] = str(self.root / "data")
        os.environ["WANDB_CACHE_DIR"] = str(self.root / "cache")
        self.run = wandb.init(project=self.project, name=run_name, dir=str(self.root), config=params,
                              mode="offline", reinit="create_new", settings=wandb.Settings(
                                  console="off", silent=True, x_disable_stats=True, x_disable_machine_info=True,
                                  x_save_requirements=False, disable_git=True, disable_code=True))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def flush(self) -> None:
        """Nothing to do: wandb-core appends each record to the run's log as it arrives."""

    def _log_file(self, name: str, data: bytes, kind: str) -> None:
        with tempfile.TemporaryDirectory() as staging:
            path = Path(staging, artifact_name(name))
            path.write_bytes(data)
            artifact = wandb.Artifact(artifact_name(name), type=kind)
            artifact.add_file(str(path), name=name)  # copied to the staging area now
            self.run.log_artifact(artifact)

    def log_artifact(self, name: str, data: bytes) -> None:
        self._log_file(name, data, "file")

    def log_model(self, model: Any, example: Any) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        self._log_file("model.pt", buffer.getvalue(), "model")

    def finish(self) -> None:
        self.run.finish()

    def locator(self) -> dict[str, str]:
        run_dir = Path(self.run.dir).parent
        return {"log": str(run_dir / f"run-{self.run.id}.wandb")}

    @staticmethod
    def as_stored(run: RunData) -> RunData:
        """Config values are JSON numbers in the log: an integral float comes back as an int."""
        params = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in run.params.items()}
        return RunData(params=params, metrics=run.metrics, artifacts=run.artifacts, summary=latest(run.metrics),
                       finished=run.finished, model=run.model)

    @staticmethod
    def records(log: str) -> list[dict[str, Any]]:
        """Every record of a run's transaction log, through wandb's own reader."""
        done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", log],
                              capture_output=True, text=True, timeout=READ_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wandb could not read {log}: {done.stderr.strip()[-500:]}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    @staticmethod
    def read(locator: dict[str, str], *, with_model: bool = True) -> RunData:
        run = RunData()
        for record in WandbTracker.records(locator["log"]):
            kind = record.get("type")
            body = record.get(kind, {}) if isinstance(kind, str) else {}
            if kind in ("run", "config"):
                update = (body.get("config") or {}).get("update", {}) if kind == "run" else body.get("update", {})
                run.params.update({k: v for k, v in update.items() if not k.startswith("_")})
            elif kind == "history":
                step = int(body["step"]["num"])
                for key, value in body["item"].items():
                    if not key.startswith("_"):
                        run.metrics.setdefault(key, []).append((step, _number(value)))
            elif kind == "summary":
                run.summary.update({k: _number(v) for k, v in body.get("update", {}).items() if not k.startswith("_")})
            elif kind == "artifact":
                files = {entry["path"]: _staged_bytes(entry) for entry in body["manifest"]["contents"]}
                if body.get("type") == "model":
                    run.model = _state_dict(files["model.pt"]) if with_model else None
                else:
                    run.artifacts.update(files)
            elif kind == "exit":
                run.finished = int(body.get("exit_code", 0)) == 0
        run.metrics = {key: sorted(series) for key, series in run.metrics.items()}
        return run


def _number(value: Any) -> Any:
    """Logged metrics are floats; JSON writes an integral one without its ".0"."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _staged_bytes(entry: dict[str, Any]) -> bytes:
    """An artifact file's bytes from wandb's staging copy, checked against the manifest's MD5."""
    data = Path(entry["local_path"]).read_bytes()
    if base64.b64encode(hashlib.md5(data).digest()).decode() != entry["digest"]:
        raise RuntimeError(f"artifact file {entry['path']} does not match its manifest digest")
    return data


def _state_dict(data: bytes) -> dict[str, Any]:
    import torch

    return {k: v.numpy() for k, v in torch.load(io.BytesIO(data), weights_only=True).items()}
