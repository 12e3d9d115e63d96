"""Sliding windows over a stream, each tested against a fixed reference window.

Rows arrive in batches of any size; every `step` rows (once the first `window` rows are in)
the latest `window` rows are tested. Each report controls false alarms for its own window
only: over many overlapping windows the chance of at least one false alarm grows, so
alert on persistence (k of the last m windows) rather than on a single window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reference.monitoring.drift import DriftDetector, DriftReport


@dataclass(frozen=True)
class WindowReport:
    start: int  # first row of the window, counted from the start of the stream
    stop: int  # one past its last row
    report: DriftReport


class SlidingWindows:
    def __init__(self, detector: DriftDetector, window: int, step: int | None = None) -> None:
        if window < detector.min_rows:
            raise ValueError(f"window of {window} rows is below the detector's min_rows {detector.min_rows}")
        step = window if step is None else step
        if not 0 < step <= window:
            raise ValueError(f"step must be in [1, window], got {step}")
        self.detector, self.window, self.step = detector, window, step
        self.seen = 0  # rows received so far
        self._buffer: pd.DataFrame | np.ndarray | None = None
        self._buffer_start = 0  # stream index of the buffer's first row
        self._next_stop = window

    def update(self, rows: pd.DataFrame | np.ndarray) -> list[WindowReport]:
        """Add a batch; return a report for every window completed by it, oldest first."""
        if self._buffer is None:
            self._buffer = rows
        elif type(rows) is not type(self._buffer):
            raise TypeError(f"batches must all be {type(self._buffer).__name__}, got {type(rows).__name__}")
        elif isinstance(rows, pd.DataFrame):
            self._buffer = pd.concat([self._buffer, rows], ignore_index=True)
        else:
            self._buffer = np.concatenate([self._buffer, rows])
        self.seen += len(rows)
        reports = []
        while self._next_stop <= self.seen:
            start = self._next_stop - self.window
            window = self._rows(start - self._buffer_start, self._next_stop - self._buffer_start)
            reports.append(WindowReport(start, self._next_stop, self.detector.test(window)))
            self._next_stop += self.step
        self._drop_before(self._next_stop - self.window)
        return reports

    def _rows(self, begin: int, end: int) -> pd.DataFrame | np.ndarray:
        assert self._buffer is not None
        if isinstance(self._buffer, pd.DataFrame):
            return self._buffer.iloc[begin:end].reset_index(drop=True)
        return self._buffer[begin:end]

    def _drop_before(self, stream_index: int) -> None:
        """Keep only rows that a future window can still contain."""
        drop = stream_index - self._buffer_start
        if drop > 0:
            self._buffer = self._rows(drop, len(self._buffer))  # type: ignore[arg-type]
            self._buffer_start = stream_index
