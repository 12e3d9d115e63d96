"""Scenario registry: a decorator registers, `get()`/`scenarios()` hand out copies.

A scenario is a class with `setup`, `measure` (the timed part) and `check` (conformance).
It declares an id `<family>.<technique>[.<variant>]`, a parameter grid (the `full`
profile), per-profile overrides of that grid, and its requirements. The harness finds
scenario modules by walking packages for modules named `scenarios`; it never imports a
technique by name.
"""

from __future__ import annotations

import fnmatch
import importlib
import itertools
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from suite.errors import SuiteError
from suite.profiles import PROFILES
from suite.requirements import Requirement

if TYPE_CHECKING:
    from suite.context import RunContext
    from suite.schema import Check, Metric

ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$")
DEFAULT_PACKAGES = ("reference",)


class Skip(Exception):
    """Raised by a scenario that finds at run time it cannot run here (a server will not
    start, say). Recorded as `skipped` with the message, not as `error`."""


class Scenario:
    id: ClassVar[str]
    grid: ClassVar[dict[str, list[Any]]]
    profiles: ClassVar[dict[str, dict[str, list[Any]]]]
    requires: ClassVar[tuple[Requirement, ...]] = ()
    timeout_s: ClassVar[float] = 600.0
    # At most this many process runs, whatever the profile asks: for scenarios whose every
    # run is a long multi-process job (servers, clusters) with its own repetition inside.
    max_replicates: ClassVar[int | None] = None
    # CPUs its worker is pinned to, whatever the budget's threads (0: as the budget says).
    # A load generator and a server need a core each: pinned to the one CPU a 2-core host
    # gives a worker by default, they shared it, and the client's CPU per request came out
    # of the server's throughput.
    cpus: ClassVar[int] = 0

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        """Requirements for one point of the grid; override when they depend on params."""
        return list(self.requires)

    # Why instruction counts cannot measure this scenario ("" when they can): its work is in
    # other processes (a server under load) or it times no in-process step (error rates over
    # trials, a study). Said up front, the runner skips it before starting Valgrind instead
    # of finding out after a slow run under it.
    not_counted: ClassVar[str] = ""

    def uncounted(self, params: dict[str, Any]) -> str:
        """`not_counted`, or why this point of the grid cannot be counted."""
        return self.not_counted

    def setup(self, ctx: RunContext) -> None:
        """Build models and data; not timed."""

    def measure(self, ctx: RunContext) -> list[Metric]:
        raise NotImplementedError

    def step(self) -> None:
        """One call of the timed operation, after setup: what asv and pytest-benchmark time."""
        raise NotImplementedError(f"{self.id} has no single timed step")

    def check(self, ctx: RunContext) -> list[Check]:
        return []

    @classmethod
    def param_grid(cls, profile: str) -> list[dict[str, Any]] | None:
        """Every point of the grid for this profile, or None when not in that profile."""
        if profile == "full":
            axes = dict(cls.grid)
        elif profile in cls.profiles:
            axes = {**cls.grid, **cls.profiles[profile]}
        else:
            return None
        names = sorted(axes)
        return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


_REGISTRY: dict[str, type[Scenario]] = {}


def scenario(
    scenario_id: str,
    *,
    grid: dict[str, list[Any]],
    profiles: dict[str, dict[str, list[Any]]],
    requires: tuple[Requirement, ...] = (),
    timeout_s: float = 600.0,
    max_replicates: int | None = None,
) -> Callable[[type[Scenario]], type[Scenario]]:
    """Register a Scenario subclass. Every scenario must have a `quick` profile."""
    if not ID_PATTERN.match(scenario_id):
        raise ValueError(f"scenario id {scenario_id!r} is not <family>.<technique>[.<variant>]")
    if "quick" not in profiles:
        raise ValueError(f"scenario {scenario_id} declares no quick profile")
    if unknown_profiles := set(profiles) - set(PROFILES):
        raise ValueError(f"{scenario_id}: unknown profiles {sorted(unknown_profiles)}; known: {', '.join(PROFILES)}")
    for profile, overrides in profiles.items():
        unknown = set(overrides) - set(grid)
        if unknown:
            raise ValueError(f"{scenario_id}: profile {profile} overrides unknown params {unknown}")

    def register(cls: type[Scenario]) -> type[Scenario]:
        if scenario_id in _REGISTRY and _REGISTRY[scenario_id].__qualname__ != cls.__qualname__:
            raise ValueError(f"scenario id {scenario_id} registered twice")
        cls.id = scenario_id
        cls.grid = grid
        cls.profiles = profiles
        cls.requires = requires
        cls.timeout_s = timeout_s
        # A family whose every run is a long multi-process job may cap its runs once, in
        # its scenarios module (MAX_REPLICATES), instead of on every scenario.
        family_cap = getattr(sys.modules.get(cls.__module__), "MAX_REPLICATES", None)
        cls.max_replicates = max_replicates if max_replicates is not None else family_cap
        _REGISTRY[scenario_id] = cls
        return cls

    return register


def discover(packages: tuple[str, ...] = DEFAULT_PACKAGES, leaf: str = "scenarios") -> dict[str, str]:
    """Import every `<package>.<family>.<leaf>` module so its decorators run (again, after a
    `reset()`: a module imported before is reloaded). A module that fails to import does
    not stop the others: returns {module: error} for the caller to report."""
    broken: dict[str, str] = {}
    for package_name in packages:
        try:
            package = importlib.import_module(package_name)
        except ImportError as exc:
            raise SuiteError(f"cannot import scenario package {package_name!r}: {exc}") from None
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if info.name.rsplit(".", 1)[-1] != leaf:
                continue
            try:
                if info.name in sys.modules:
                    importlib.reload(sys.modules[info.name])
                else:
                    importlib.import_module(info.name)
            except Exception as exc:  # noqa: BLE001 - one broken family must not hide the rest
                broken[info.name] = f"{type(exc).__name__}: {exc}"
    return broken


def scenarios() -> dict[str, type[Scenario]]:
    """A copy of the registry: callers cannot register or remove by mutating it."""
    return dict(sorted(_REGISTRY.items()))


def get(scenario_id: str) -> type[Scenario]:
    try:
        return _REGISTRY[scenario_id]
    except KeyError:
        raise SuiteError(f"no scenario {scenario_id!r}; `mlsuite list` shows them") from None


def reset() -> dict[str, type[Scenario]]:
    """Empty the registry (tests); returns what it held so it can be restored."""
    held = dict(_REGISTRY)
    _REGISTRY.clear()
    return held


def restore(held: dict[str, type[Scenario]]) -> None:
    _REGISTRY.clear()
    _REGISTRY.update(held)


def select(pattern: str, profile: str, where: dict[str, str] | None = None
           ) -> Iterator[tuple[type[Scenario], dict[str, Any]]]:
    """Every (scenario, params) whose id matches the glob, that takes part in profile, and
    whose params equal every `where` value they have (compared as text: `model=mlp`,
    `batch_size=64`); a scenario without that param is not filtered by it."""
    matched = False
    for scenario_id, cls in scenarios().items():
        if not fnmatch.fnmatch(scenario_id, pattern):
            continue
        matched = True
        for params in cls.param_grid(profile) or []:
            if all(key not in params or str(params[key]) == value for key, value in (where or {}).items()):
                yield cls, params
    if not matched:
        raise SuiteError(f"--only {pattern!r} matches no scenario; `mlsuite list` shows them")
