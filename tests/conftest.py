"""Shared fixtures and named skip marks (use these instead of ad-hoc skipif strings).

Test modules that need a family's packages start with `pytest.importorskip(...)`, so
`pytest --collect-only` works with only the core installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from suite import registry
from suite.requirements import cuda_device_count
from tests.check_ids import MARKER_HELP, checks_built, pytest_runtest_makereport  # noqa: F401 - registered here

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


requires_cuda = pytest.mark.skipif(cuda_device_count() == 0, reason="needs a CUDA device")
requires_two_gpus = pytest.mark.skipif(cuda_device_count() < 2, reason="needs 2 CUDA devices")
requires_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs java on PATH")


def requires_binary(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"needs {name} on PATH")


@pytest.fixture
def empty_registry():
    """A registry with nothing in it for the test; the real one is restored after."""
    held = registry.reset()
    yield
    registry.restore(held)
