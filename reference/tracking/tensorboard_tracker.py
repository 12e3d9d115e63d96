"""TensorBoard through torch's SummaryWriter: scalars (stored as doubles, so they come back
exactly), hparams, the model graph, and artifacts as string tensors under `artifacts/`;
read back with TensorBoard's own EventAccumulator.

The hparams plugin's protocol marks the lifecycle: session_start_info (the params) is
written at start, session_end_info only at finish, so an interrupted run reads back as
unfinished. Stored representation: hparams numbers are doubles (ints and bools become
floats: torch checks int before bool).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from reference.tracking.rundata import RunData

ARTIFACT_PREFIX = "artifacts/"
READ_EVERYTHING = {"scalars": 0, "tensors": 0, "graph": 0, "histograms": 0, "images": 0}


def artifact_summary(name: str, data: bytes) -> Summary:
    """Raw bytes as a one-element string tensor the text plugin can show."""
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    tensor = TensorProto(dtype="DT_STRING", string_val=[data],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=ARTIFACT_PREFIX + name, metadata=metadata, tensor=tensor)])


class TensorBoardTracker:
    tool = "tensorboard"
    durable_flush = True  # flush() hands every event to the OS

    def __init__(self, root: Path, *, flush_secs: int = 120) -> None:
        self.root = root
        self.flush_secs = flush_secs
        self.log_dir = root

    def start(self, run_name: str, params: dict[str, Any]) -> None:
        """A directory of its own per run: the reader merges every event file in a directory."""
        self.log_dir = self.root / f"{run_name}-{uuid.uuid4().hex[:8]}"
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=self.flush_secs)
        experiment, session_start, self.session_end = hparams(params, {})
        for summary in (experiment, session_start):
            self._events().add_summary(summary)
        self.writer.flush()  # the params are on disk before the first step

    def _events(self) -> Any:
        """The writer's event file (raw summaries go straight to it)."""
        return self.writer._get_file_writer()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step, new_style=True, double_precision=True)

    def flush(self) -> None:
        self.writer.flush()

    def log_artifact(self, name: str, data: bytes) -> None:
        self._events().add_summary(artifact_summary(name, data))

    def log_model(self, model: Any, example: Any) -> None:
        self.writer.add_graph(model, example)

    def finish(self) -> None:
        self._events().add_summary(self.session_end)
        self.writer.close()

    def locator(self) -> dict[str, str]:
        return {"log_dir": str(self.log_dir)}

    @staticmethod
    def as_stored(run: RunData) -> RunData:
        params = {k: float(v) if isinstance(v, int | float) else v for k, v in run.params.items()}
        return RunData(params=params, metrics=run.metrics, artifacts=run.artifacts, finished=run.finished,
                       graph_ops=run.graph_ops)

    @staticmethod
    def read(locator: dict[str, str], *, with_model: bool = True) -> RunData:
        events = EventAccumulator(locator["log_dir"], size_guidance=READ_EVERYTHING)
        events.Reload()
        run = RunData()
        for tag in events.Tags()["scalars"]:  # old-style float32 scalars, as other writers log them
            run.metrics[tag] = sorted((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["tensors"]:
            plugin = events.SummaryMetadata(tag).plugin_data.plugin_name
            if plugin == "scalars":
                run.metrics[tag] = sorted((e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                                          for e in events.Tensors(tag))
            elif tag.startswith(ARTIFACT_PREFIX):
                run.artifacts[tag.removeprefix(ARTIFACT_PREFIX)] = events.Tensors(tag)[-1].tensor_proto.string_val[0]
        for content in events.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                run.params = {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
            if data.HasField("session_end_info"):
                run.finished = data.session_end_info.status == api_pb2.STATUS_SUCCESS
        if with_model and events.Tags()["graph"]:
            run.graph_ops = tuple(node.name for node in events.Graph().node)
        return run
