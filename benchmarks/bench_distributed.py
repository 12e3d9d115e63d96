"""asv benchmarks for the distributed techniques (the scenarios of reference/distributed).

`setup` launches the ranks (torchrun) and `teardown` stops them; `time_step` is one
synchronised training step across the job, including the launcher's round trip to the
ranks (the suite's own records time the step inside the ranks, without it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from suite import registry

from .common import prepared, variants

if TYPE_CHECKING:  # not at run time: asv also runs this file against commits without the module
    from reference.distributed.scenarios import DistributedScenario

# Every strategy the distributed scenarios register (every DeepSpeed stage of their grid);
# the launcher scenarios (elastic torchrun, deepspeed --hostfile) have no step to time.
VARIANTS = {label: point for label, point in variants("distributed.*", exclude=("world_sizes",)).items()
            if "world_sizes" in registry.get(point[0]).grid}


class DistributedStep:
    """One training step of each strategy at 1 and 2 processes, and the bytes a rank holds."""

    params = (list(VARIANTS), [1, 2])
    param_names = ["strategy", "processes"]
    timeout = 600

    def setup(self, strategy: str, processes: int) -> None:
        scenario_id, extra = VARIANTS[strategy]
        self.scenario = cast("DistributedScenario", prepared(scenario_id, world_sizes=[processes], **extra))
        self.scenario.step()  # optimizer state exists before anything is tracked

    def teardown(self, strategy: str, processes: int) -> None:
        self.scenario.teardown()

    def time_step(self, strategy: str, processes: int) -> None:
        self.scenario.step()

    def track_optimizer_state_bytes_per_rank(self, strategy: str, processes: int) -> int:
        return max(rank["optimizer_state"] for rank in self.scenario.held_bytes())

    def track_parameter_bytes_per_rank(self, strategy: str, processes: int) -> int:
        return max(rank["parameters"] for rank in self.scenario.held_bytes())

    track_optimizer_state_bytes_per_rank.unit = "bytes"  # type: ignore[attr-defined]
    track_parameter_bytes_per_rank.unit = "bytes"  # type: ignore[attr-defined]
