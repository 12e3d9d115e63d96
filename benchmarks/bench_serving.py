"""asv benchmarks for serving (the scenarios of reference/serving): the in-process limit
and one request at concurrency 1 through each real server. Load sweeps, goodput and
serving efficiency are in the `serving.*` records of `mlsuite run`."""

from __future__ import annotations

from .common import axis, prepared, variants

# Every real server of the serving scenarios, at each batching setting of its grid.
SERVERS = variants("serving.*", vary=("batching",))


class ServingInProcess:
    """The served model file called in-process at a batch size (the physical limit)."""

    params = (axis("serving.inprocess", "format"), axis("serving.inprocess", "batch"))
    param_names = ["format", "batch"]

    def setup(self, fmt: str, batch: int) -> None:
        self.scenario = prepared("serving.inprocess", format=fmt, batch=batch)

    def time_step(self, fmt: str, batch: int) -> None:
        self.scenario.step()

    def peakmem_step(self, fmt: str, batch: int) -> None:
        self.scenario.step()


class ServingRequest:
    """One request at concurrency 1, over a kept-open connection, through a real server."""

    params = list(SERVERS)
    param_names = ["server"]
    timeout = 300
    number = 20

    def setup(self, server: str) -> None:
        from suite.registry import Skip

        scenario_id, options = SERVERS[server]
        try:
            self.scenario = prepared(scenario_id, **options)
        except Skip as exc:
            raise NotImplementedError(str(exc)) from None

    def teardown(self, server: str) -> None:
        self.scenario.teardown()  # type: ignore[attr-defined]

    def time_request(self, server: str) -> None:
        self.scenario.step()
