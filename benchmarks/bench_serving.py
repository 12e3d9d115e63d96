"""asv benchmarks for serving (the scenarios of reference/serving): the in-process limit
and one request at concurrency 1 through each real server. Load sweeps, goodput and
serving efficiency are in the `serving.*` records of `mlsuite run`."""

from __future__ import annotations

from .common import prepared


class ServingInProcess:
    """The served model file called in-process at a batch size (the physical limit)."""

    params = (["torchscript", "onnx", "state_dict"], [1, 16, 64])
    param_names = ["format", "batch"]

    def setup(self, fmt: str, batch: int) -> None:
        self.scenario = prepared("serving.inprocess", format=fmt, batch=batch)

    def time_step(self, fmt: str, batch: int) -> None:
        self.scenario.step()

    def peakmem_step(self, fmt: str, batch: int) -> None:
        self.scenario.step()


class ServingRequest:
    """One request at concurrency 1, over a kept-open connection, through a real server."""

    params = (["serving.fastapi", "serving.torchserve", "serving.triton"], ["off", "on"])
    param_names = ["server", "batching"]
    timeout = 300
    number = 20

    def setup(self, server: str, batching: str) -> None:
        from suite.registry import Skip

        try:
            self.scenario = prepared(server, batching=batching)
        except Skip as exc:
            raise NotImplementedError(str(exc)) from None

    def teardown(self, server: str, batching: str) -> None:
        self.scenario.teardown()  # type: ignore[attr-defined]

    def time_request(self, server: str, batching: str) -> None:
        self.scenario.step()
