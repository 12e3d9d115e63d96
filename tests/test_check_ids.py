"""Every conformance check is linked to a planted bug that makes it fail.

Families declare their check ids (`CHECK_IDS` in each conformance module, listed by
`suite.checks.declared_check_ids()` without importing anything heavy); planted-bug tests
declare the ids they break (`@pytest.mark.breaks(...)`). Here: every declared id has such a
test, every marker names a declared id, and the run-time half (tests/check_ids.py: the named
check really failed; a scenario emitted only declared ids) itself catches what it should.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from suite import checks
from suite.schema import Check
from tests.check_ids import Built, scenario_family, unbroken, undeclared
from tests.conftest import REPO_ROOT

DECLARED = checks.declared_check_ids()


def breaks_markers() -> dict[str, list[str]]:
    """{check id: the tests (file:line) whose `breaks` marker names it}, read from the sources."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "breaks"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "mark"):
                for arg in node.args:
                    assert isinstance(arg, ast.Constant), f"{path.name}:{node.lineno}: breaks() takes literal ids"
                    found.setdefault(arg.value, []).append(f"{path.name}:{node.lineno}")
    return found


def family_source(family: str) -> str:
    return "\n".join(p.read_text() for p in sorted((REPO_ROOT / "reference" / family).glob("*.py")))


def test_every_family_declares_its_checks() -> None:
    families = {p.parent.name for p in (REPO_ROOT / "reference").glob("*/scenarios.py")}
    assert families and set(DECLARED) == families


def test_check_ids_are_unique_across_families() -> None:
    every = [i for ids in DECLARED.values() for i in ids]
    assert len(every) == len(set(every)), sorted(i for i in every if every.count(i) > 1)


@pytest.mark.parametrize("family", sorted(DECLARED))
def test_every_declared_id_is_spelled_in_its_family_code(family: str) -> None:
    """The fixed parts of each id appear in the family's code (a typo in CHECK_IDS, or a check
    renamed in code but not in its declaration, fails here without running anything)."""
    source = family_source(family)
    absent = [i for i in DECLARED[family]
              if any(len(piece) > 1 and piece.strip(".") not in source for piece in checks.PLACEHOLDER.split(i))]
    assert not absent, f"{family}: declared ids whose text is not in reference/{family}: {absent}"


def test_every_declared_check_has_a_planted_bug_test() -> None:
    marked = breaks_markers()
    orphans = {family: [i for i in ids if i not in marked] for family, ids in DECLARED.items()}
    orphans = {family: ids for family, ids in orphans.items() if ids}
    assert not orphans, f"checks no planted-bug test breaks (mark one `@pytest.mark.breaks(id)`): {orphans}"


def test_every_breaks_marker_names_a_declared_check() -> None:
    every = {i for ids in DECLARED.values() for i in ids}
    unknown = {i: where for i, where in breaks_markers().items() if i not in every}
    assert not unknown, f"breaks() names ids no family declares: {unknown}"


# -- the run-time half, fed its own planted bugs ------------------------------------------------

def test_matches_id_fills_placeholders_and_nothing_else() -> None:
    template = "tuning.optuna.<storage>.same_seed_same_trials"
    assert checks.matches_id("tuning.optuna.sqlite.same_seed_same_trials", template)
    assert checks.matches_id("zero.torch.parameters_match_single_process", "<strategy>.parameters_match_single_process")
    assert not checks.matches_id("tuning.optuna..same_seed_same_trials", template)
    assert not checks.matches_id("serving.bad_input_4xx_extra", "serving.bad_input_4xx")
    assert not checks.matches_id("serving.bad_input.4xx", "serving.bad_input_4xx")


def test_a_planted_bug_that_no_longer_fails_its_check_is_reported() -> None:
    built = [Built(Check(name="serving.bad_input_4xx", passed=True), None),
             Built(Check(name="serving.outputs_match_eager", passed=False), None)]
    assert unbroken(["serving.bad_input_4xx", "serving.outputs_match_eager"], built) == ["serving.bad_input_4xx"]


def test_a_scenario_check_nobody_declared_is_reported() -> None:
    declared = {"training": ("amp.<what>_tracks_fp32",)}
    built = [Built(Check(name="amp.loss_tracks_fp32", passed=True), "training"),
             Built(Check(name="amp.new_check", passed=True), "training"),
             Built(Check(name="made.by.a.test", passed=True), None)]
    assert undeclared(built, declared) == ["training: amp.new_check"]


def test_a_check_is_attributed_to_the_family_whose_scenario_returned_it(empty_registry) -> None:  # type: ignore[no-untyped-def]
    import sys

    class Fake:  # not a Scenario: its check() does not count
        def check(self) -> str | None:
            return scenario_family(sys._getframe())

    assert Fake().check() is None
    from suite import registry

    class Planted(registry.Scenario):
        def check(self) -> str | None:  # type: ignore[override]
            return scenario_family(sys._getframe())

    Planted.__module__ = "reference.training.scenarios"
    assert Planted().check() == "training"
    Planted.__module__ = "tests.planted.scenarios"
    assert Planted().check() is None


def test_declarations_are_refused_when_malformed(tmp_path: Path) -> None:
    package = tmp_path / "fakepkg"
    (package / "fam").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "fam" / "conformance.py").write_text('CHECK_IDS = ("Bad Id",)\n')
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ValueError, match="malformed"):
            checks.declared_check_ids(("fakepkg",))
        (package / "fam" / "conformance.py").write_text('CHECK_IDS = ("fam.ok", "fam.<part>.ok")\n')
        assert checks.declared_check_ids(("fakepkg",)) == {"fam": ("fam.ok", "fam.<part>.ok")}
        (package / "fam" / "conformance.py").write_text("X = 1\n")
        with pytest.raises(ValueError, match="declares no CHECK_IDS"):
            checks.declared_check_ids(("fakepkg",))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fakepkg", None)


def test_the_marker_is_registered_with_strict_markers(pytestconfig: pytest.Config) -> None:
    assert any(re.match(r"breaks\(", line) for line in pytestconfig.getini("markers"))
