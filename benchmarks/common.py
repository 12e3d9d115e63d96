"""Shared by the asv benchmarks and the pytest-benchmark tests: a scenario set up at one
point of its grid with the quick budget and a fixed seed, ready for `step()`."""

from __future__ import annotations

from typing import Any

from suite import registry
from suite.profiles import PROFILES
from suite.requirements import first_unmet


def prepared(scenario_id: str, **params: Any) -> registry.Scenario:
    """Params not given take the first value of the scenario's quick grid. Raises
    NotImplementedError (asv's "not applicable") when the scenario is absent or a
    requirement is unmet here."""
    if scenario_id not in registry.scenarios():
        registry.discover()
    if scenario_id not in registry.scenarios():  # asv runs today's benchmarks against older commits
        raise NotImplementedError(f"{scenario_id} does not exist in this commit")
    cls = registry.get(scenario_id)
    quick = {**cls.grid, **cls.profiles["quick"]}
    resolved = {name: values[0] for name, values in quick.items()} | params
    instance = cls()
    if (reason := first_unmet(instance.requirements(resolved))) is not None:
        raise NotImplementedError(reason)
    # Imported here: asv takes any class in a benchmark module's namespace with a `time_*`
    # method (RunContext.time_steps) for a benchmark.
    from suite.context import RunContext

    budget = PROFILES["quick"]
    instance.setup(RunContext(params=resolved, budget=budget, profile="quick", seed=budget.seed))
    return instance
