"""Shared by the asv benchmarks and the pytest-benchmark tests: which points to benchmark,
read from the registry (no hand-kept tables), and a scenario set up at one point of its grid
with the quick budget and a fixed seed, ready for `step()`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from suite import registry
from suite.profiles import PROFILES
from suite.requirements import first_unmet


def variants(pattern: str, profile: str = "full", *, vary: Iterable[str] | None = None,
             exclude: Iterable[str] = ()) -> dict[str, tuple[str, dict[str, Any]]]:
    """{label: (scenario id, params)} for every scenario whose id matches the glob, one entry
    per combination of the axes that take more than one value in the profile's grid (only the
    `vary` axes when given: scenarios with none of them are left out; never the `exclude`
    axes, which the benchmark sets itself). Labels read `<id>` or `<id>[axis=value,...]`."""
    import fnmatch

    registry.discover()
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for scenario_id, cls in registry.scenarios().items():
        grid = {**cls.grid, **cls.profiles.get(profile, {})} if profile != "full" else dict(cls.grid)
        if not fnmatch.fnmatch(scenario_id, pattern) or (profile != "full" and profile not in cls.profiles):
            continue
        axes = sorted(a for a, values in grid.items() if a not in set(exclude)
                      and (a in vary if vary is not None else len(values) > 1))
        if vary is not None and not axes:
            continue
        for values in itertools.product(*(grid[a] for a in axes)):
            params = dict(zip(axes, values))
            label = scenario_id + (f"[{','.join(f'{a}={v}' for a, v in params.items())}]" if params else "")
            found[label] = (scenario_id, params)
    return found


def axis(scenario_id: str, name: str, profile: str = "full") -> list[Any]:
    """The values one axis of a scenario's grid takes in a profile."""
    registry.discover()
    cls = registry.get(scenario_id)
    return list({**cls.grid, **cls.profiles.get(profile, {})}[name] if profile != "full" else cls.grid[name])


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
