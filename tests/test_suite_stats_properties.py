"""Property tests of the statistics (hypothesis is a dev dependency)."""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from suite import stats  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=2, max_size=200))
def test_bootstrap_ci_brackets_the_median(samples: list[float]) -> None:
    metric = stats.summarize("t", "s", False, samples)
    assert metric.ci_low <= metric.median <= metric.ci_high
    assert metric.n == len(samples) and metric.samples == samples
