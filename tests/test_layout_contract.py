"""The layout contract, derived from the registry rather than from lists kept by hand: adding
a technique touches its own folder only. A scenario id starts with its folder's name, every
package a scenario requires comes with its family's extra, the benchmarks' parameters are the
registry's points, and a grid under an unknown profile name is refused at registration."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from suite import registry
from suite.profiles import PROFILES
from suite.requirements import Package
from tests.conftest import REPO_ROOT

FRONT_ENDS = sorted([*REPO_ROOT.glob("benchmarks/bench_*.py"), *REPO_ROOT.glob("tests/test_*_bench.py")])


@functools.cache
def reference_scenarios() -> dict[str, type[registry.Scenario]]:
    assert registry.discover() == {}
    return {sid: cls for sid, cls in registry.scenarios().items() if cls.__module__.startswith("reference.")}


def family(cls: type[registry.Scenario]) -> str:
    return cls.__module__.split(".")[1]


def every_point(cls: type[registry.Scenario]) -> list[dict]:
    return [params for profile in PROFILES for params in cls.param_grid(profile) or []]


@functools.cache
def extra_closure(extra: str) -> frozenset[str]:
    """Distributions `pip install mlsuite[extra]` brings: the core dependencies, the extra's
    own (other extras of mlsuite expanded) and, through installed metadata, theirs."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][extra]]]
    found: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name == "mlsuite":
            pending += [Requirement(r) for e in requirement.extras for r in project["optional-dependencies"][e]]
            continue
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its own dependencies cannot be read
        for text in requires:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in requirement.extras or {""}):
                pending.append(child)
    return frozenset(found)


def test_every_scenario_id_starts_with_its_folder() -> None:
    found = reference_scenarios()
    assert found
    wrong = {sid: family(cls) for sid, cls in found.items() if sid.split(".")[0] != family(cls)}
    assert not wrong, f"scenario ids whose prefix is not their folder: {wrong}"


def test_every_family_folder_has_an_extra_of_its_name() -> None:
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    families = {family(cls) for cls in reference_scenarios().values()}
    assert families and families <= set(extras), families - set(extras)
    assert families <= set(Requirement(extras["all"][0]).extras), "`all` must install every family"


def test_every_package_a_scenario_requires_comes_with_its_family_extra() -> None:
    missing: dict[str, set[str]] = {}
    for sid, cls in reference_scenarios().items():
        closure = extra_closure(family(cls))
        packages = {r.name for params in every_point(cls) for r in cls().requirements(params) if isinstance(r, Package)}
        if absent := {p for p in packages if canonicalize_name(p) not in closure}:
            missing[sid] = absent
    assert not missing, f"required packages that `pip install mlsuite[<family>]` does not bring: {missing}"


def test_extra_closure_sees_only_what_the_extra_brings() -> None:
    """The closure used above is not everything installed: the core does not bring torch."""
    assert "torch" not in extra_closure("monitoring")
    assert {"torch", "scikit-learn", "numpy"} <= extra_closure("training")


def test_the_registry_refuses_a_profile_name_no_budget_has(empty_registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown profiles \\['gpus'\\]"):
        @registry.scenario("x.y", grid={"a": [1]}, profiles={"quick": {}, "gpus": {"a": [2]}})
        class Misnamed(registry.Scenario):
            pass
    assert registry.scenarios() == {}

    @registry.scenario("x.z", grid={"a": [1]}, profiles={name: {} for name in PROFILES})
    class Everywhere(registry.Scenario):
        pass

    assert all(Everywhere.param_grid(name) for name in PROFILES)


def test_benchmark_parameters_are_the_registry_points() -> None:
    from benchmarks import bench_distributed, bench_optimize, bench_tracking, bench_training
    from benchmarks.common import variants

    scenarios = reference_scenarios()
    for module, fam in [(bench_optimize, "optimize"), (bench_distributed, "distributed"),
                        (bench_training, "training"), (bench_tracking, "tracking")]:
        table = getattr(module, {"training": "TECHNIQUES", "tracking": "POINTS"}.get(fam, "VARIANTS"))
        # every scenario of the family; for distributed, every one with a step to time (the
        # launcher scenarios, elastic torchrun and deepspeed --hostfile, have none)
        ids = {sid for sid, cls in scenarios.items() if family(cls) == fam
               and (fam != "distributed" or "world_sizes" in cls.grid)}
        assert {sid for sid, _ in table.values()} == ids, module.__name__
        for sid, params in table.values():
            assert all(value in scenarios[sid].grid[axis] or value in scenarios[sid].profiles["quick"].get(axis, [])
                       for axis, value in params.items()), (sid, params)
    mlflow = variants("tracking.mlflow", exclude=("metrics_per_step",))
    assert mlflow == {f"tracking.mlflow[synchronous={v}]": ("tracking.mlflow", {"synchronous": v})
                      for v in scenarios["tracking.mlflow"].grid["synchronous"]}


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: p.name)
def test_no_benchmark_front_end_keeps_a_table_of_scenario_ids(path: Path) -> None:
    """A literal list, tuple, set or dict naming two or more scenarios is a table kept by hand."""
    ids = set(reference_scenarios())
    tables = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            items = node.keys + node.values if isinstance(node, ast.Dict) else node.elts
            named = [n.value for n in ast.walk(ast.Module(body=[ast.Expr(i) for i in items if i], type_ignores=[]))
                     if isinstance(n, ast.Constant) and n.value in ids]
            if len(set(named)) >= 2:
                tables.append((node.lineno, named))
    assert not tables, f"{path.name}: scenario ids listed by hand at {tables}; read them from the registry"
