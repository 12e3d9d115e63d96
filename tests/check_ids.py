"""Ties every conformance check to the planted bug that makes it fail (loaded by conftest).

A planted-bug test says which checks it breaks: `@pytest.mark.breaks("serving.bad_input_4xx")`.
While any test runs, every `Check` built is recorded. When the test passes:
- each id its `breaks` marker names must match a check built during the test that failed
  (a planted bug that no longer trips its check fails the test);
- each check a scenario's `check()` returned must match an id its family declares in
  CHECK_IDS (an undeclared check could have no planted-bug test).
`tests/test_check_ids.py` adds the static half: every declared id has a `breaks` test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import FrameType

import pytest

from suite import checks
from suite.schema import Check

MARKER = "breaks"
MARKER_HELP = f"{MARKER}(*check_ids): a planted-bug test; each named check must fail during it"


@dataclass(frozen=True)
class Built:
    check: Check
    family: str | None  # the scenario family whose check() returned it, None outside a scenario


def scenario_family(frame: FrameType | None) -> str | None:
    """`training` when a `check` method of a scenario of reference/training is on the stack."""
    from suite.registry import Scenario

    while frame is not None:
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "check" else None
        if isinstance(owner, Scenario):
            parts = type(owner).__module__.split(".")
            return parts[1] if parts[0] == "reference" and len(parts) > 2 else None
        frame = frame.f_back
    return None


def unbroken(ids: Iterable[str], built: Iterable[Built]) -> list[str]:
    """Ids of the `breaks` marker with no failed check of that id among those built."""
    failed = [b.check.name for b in built if not b.check.passed]
    return [i for i in ids if not any(checks.matches_id(name, i) for name in failed)]


def undeclared(built: Iterable[Built], declared: dict[str, tuple[str, ...]]) -> list[str]:
    """Names of checks a scenario returned that match no id its family declares."""
    return sorted({f"{b.family}: {b.check.name}" for b in built if b.family is not None
                   and not any(checks.matches_id(b.check.name, i) for i in declared.get(b.family, ()))})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[PASSED] = report.passed
    return report


PASSED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def checks_built(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Built]]:
    """Every Check built during the test, and the two rules above once it has passed."""
    built: list[Built] = []
    original = Check.__init__

    def recording(self: Check, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        built.append(Built(self, scenario_family(sys._getframe(1))))

    monkeypatch.setattr(Check, "__init__", recording)
    yield built
    monkeypatch.undo()
    if not request.node.stash.get(PASSED, False):
        return
    marker_ids = [i for mark in request.node.iter_markers(MARKER) for i in mark.args]
    if missed := unbroken(marker_ids, built):
        pytest.fail(f"planted bug did not make these checks fail: {missed}", pytrace=False)
    if any(b.family for b in built) and (stray := undeclared(built, checks.declared_check_ids())):
        pytest.fail(f"checks not declared in their family's CHECK_IDS: {stray}", pytrace=False)
