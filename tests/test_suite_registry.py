"""Registration rules, grids per profile, copy-out access, discovery."""

from __future__ import annotations

import pytest

from suite import registry
from suite.errors import SuiteError
from suite.registry import Scenario, scenario


def test_grid_expands_with_profile_overrides(empty_registry: None) -> None:
    @scenario("fam.tech", grid={"a": [1, 2], "b": ["x", "y"]}, profiles={"quick": {"a": [1]}, "gpu": {"b": ["z"]}})
    class Tech(Scenario):
        pass

    assert Tech.param_grid("full") == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert Tech.param_grid("quick") == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}]
    assert Tech.param_grid("gpu") == [{"a": 1, "b": "z"}, {"a": 2, "b": "z"}]
    assert Tech.param_grid("nonexistent") is None


@pytest.mark.parametrize(("scenario_id", "profiles", "message"), [
    ("notfamily", {"quick": {}}, "is not <family>"),
    ("Fam.Tech", {"quick": {}}, "is not <family>"),
    ("fam.tech", {"gpu": {}}, "no quick profile"),
    ("fam.tech", {"quick": {"nope": [1]}}, "unknown params"),
])
def test_bad_declarations_are_refused(empty_registry: None, scenario_id: str, profiles: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scenario(scenario_id, grid={"a": [1]}, profiles=profiles)


def test_get_and_copy_out(empty_registry: None) -> None:
    @scenario("fam.one", grid={"a": [1]}, profiles={"quick": {}})
    class One(Scenario):
        pass

    copy = registry.scenarios()
    copy.clear()
    assert registry.get("fam.one") is One
    with pytest.raises(SuiteError, match="no scenario 'fam.two'"):
        registry.get("fam.two")


def test_two_classes_cannot_share_an_id(empty_registry: None) -> None:
    scenario("fam.dup", grid={"a": [1]}, profiles={"quick": {}})(type("First", (Scenario,), {}))
    with pytest.raises(ValueError, match="registered twice"):
        scenario("fam.dup", grid={"a": [1]}, profiles={"quick": {}})(type("Second", (Scenario,), {}))


def test_select_rejects_a_glob_matching_nothing(empty_registry: None) -> None:
    with pytest.raises(SuiteError, match="matches no scenario"):
        list(registry.select("nothing.*", "quick"))


def test_discovery_finds_the_training_family(empty_registry: None) -> None:
    registry.discover()
    assert {"training.baseline", "training.amp", "training.accumulation"} <= set(registry.scenarios())


def test_a_broken_family_is_reported_and_does_not_hide_the_others(empty_registry: None) -> None:
    broken = registry.discover(("tests.planted",))
    assert broken == {"tests.planted.broken.scenarios": "ImportError: planted: this family's dependency is missing"}
    assert "planted.ok" in registry.scenarios()


def test_where_filters_only_scenarios_that_have_the_param(empty_registry: None) -> None:
    scenario("fam.a", grid={"model": ["mlp", "cnn"]}, profiles={"quick": {}})(type("A", (Scenario,), {}))
    scenario("fam.b", grid={"size": [1]}, profiles={"quick": {}})(type("B", (Scenario,), {}))
    chosen = [(cls.id, params) for cls, params in registry.select("fam.*", "quick", {"model": "cnn"})]
    assert chosen == [("fam.a", {"model": "cnn"}), ("fam.b", {"size": 1})]
