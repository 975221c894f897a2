"""`TimelineTicker`: a task on the event loop that records one timeline row per tick.

Each tick's lateness is the event loop's lag — how long something kept the loop from running — so
the same ticker that feeds the plots also measures the loop's health.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import pandas as pd

from queuelab.metrics import Timeline

#: Builds a row from (now, lag): what the owner of the ticker wants on its timeline.
RowFn = Callable[[float, float], tuple[float, ...]]


class TimelineTicker:
    """Records `row(now, lag)` every `interval` seconds into a bounded timeline."""

    def __init__(self, interval: float, row: RowFn, max_rows: int) -> None:
        self.interval = interval
        self._row = row
        self._timeline = Timeline(max_rows)
        self._lags: deque[float] = deque(maxlen=20)
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._task = loop.create_task(self._tick(), name=name)

    async def _tick(self) -> None:
        due = time.perf_counter()
        while True:
            now = time.perf_counter()
            lag = max(0.0, now - due)
            self._lags.append(lag)
            self.record(now, lag)
            due = max(due + self.interval, now)  # after a long stall, do not burst to catch up
            await asyncio.sleep(due - time.perf_counter())

    def record(self, now: float, lag: float) -> None:
        self._timeline.append(self._row(now, lag))

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop ticking (idempotent)."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    @property
    def loop_lag_s(self) -> float:
        """The worst lag over the last few ticks."""
        return max(self._lags, default=0.0)

    def frame(self, window_s: float | None = None) -> pd.DataFrame:
        return self._timeline.frame(window_s)
