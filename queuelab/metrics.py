"""Statistics the queue reports: percentiles, sliding-window rates, the timeline, and `QueueStats`.

Everything here is bounded in memory: rings of the most recent samples, not ever-growing lists.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

LATENCY_KINDS = ("wait", "service", "ttft", "e2e")
TIMELINE_COLUMNS = ("t", "elapsed", "queue_depth", "processing", "submitted_total", "completed_total",
                    "failed_total", "req_per_s", "tokens_per_s", "loop_lag_s")


@dataclass(frozen=True)
class Percentiles:
    n: int
    mean: float
    p50: float
    p90: float
    p99: float


def percentiles(values: Iterable[float]) -> Percentiles:
    """Mean and p50/p90/p99 (linear interpolation); NaN when there are no values."""
    a = np.fromiter((v for v in values if v is not None), dtype=float)
    if a.size == 0:
        return Percentiles(0, math.nan, math.nan, math.nan, math.nan)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Percentiles(int(a.size), float(a.mean()), float(p50), float(p90), float(p99))


class RateWindow:
    """Completions and tokens per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()

    def add(self, t: float, tokens: int) -> None:
        self._events.append((t, tokens))

    def rates(self, now: float, since: float) -> tuple[float, float]:
        """(req/s, tokens/s); early on, the window is only as long as the time since `since`."""
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        span = min(self.window_s, now - since)
        if span <= 0:
            return 0.0, 0.0
        return len(self._events) / span, sum(t for _, t in self._events) / span


class Histogram:
    """A cumulative histogram with fixed bucket bounds (seconds), as Prometheus exposes them."""

    BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound), ending with (inf, count)."""
        return list(zip((*self.bounds, math.inf), itertools.accumulate(self.counts)))


class LatencyLog:
    """Wait, service, ttft and e2e of completed requests: the last `maxlen` values (for percentiles)
    and cumulative histograms of all of them (for Prometheus, and an all-time mean)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._rings: dict[str, deque[float]] = {k: deque(maxlen=maxlen) for k in LATENCY_KINDS}
        self.histograms = {k: Histogram() for k in LATENCY_KINDS}

    def add(self, **values: float | None) -> None:
        for k, v in values.items():
            if v is not None:
                self._rings[k].append(v)
                self.histograms[k].observe(v)

    def summary(self) -> dict[str, Percentiles]:
        return {k: percentiles(ring) for k, ring in self._rings.items()}


class Timeline:
    """Rows sampled at a fixed interval; a ring buffer, so a long-running queue stays bounded."""

    def __init__(self, maxlen: int) -> None:
        self._rows: deque[tuple[float, ...]] = deque(maxlen=maxlen)

    def append(self, row: tuple[float, ...]) -> None:
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def frame(self, window_s: float | None = None) -> pd.DataFrame:
        """All rows, or only those within `window_s` of the last one (without copying the rest)."""
        rows: Iterable[tuple[float, ...]] = self._rows
        if window_s is not None and self._rows:
            since = self._rows[-1][0] - window_s
            rows = reversed(list(itertools.takewhile(lambda r: r[0] >= since, reversed(self._rows))))
        return pd.DataFrame(list(rows), columns=list(TIMELINE_COLUMNS))


@dataclass(frozen=True)
class ActiveRequest:
    id: int
    prompt_preview: str
    elapsed_s: float
    tokens: int


@dataclass(frozen=True)
class RecentRequest:
    id: int
    status: str
    wait: float | None
    e2e: float | None
    tokens: int
    preview: str  # the answer's start, or the error


@dataclass(frozen=True)
class Health:
    state: str  # created, running, stopping, stopped, broken
    worker_alive: bool
    loop_lag_s: float  # worst event-loop lag over the last few timeline ticks
    model: dict[str, Any]
    error: str | None = None


@dataclass(frozen=True)
class KVUsage:
    """A paged KV cache's blocks: in use, the budget, their size, and how full the running
    sequences' last blocks are on average (the only slots a paged cache holds unfilled)."""

    blocks_used: int
    blocks_total: int
    block_size: int
    last_block_fill: float

    @property
    def blocks_free(self) -> int:
        return self.blocks_total - self.blocks_used


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue. Rates over `window_s` seconds, and since start (`_overall`)."""

    uptime_s: float
    queue_size: int
    processing: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    rejected: int
    req_per_s: float
    tokens_per_s: float
    req_per_s_overall: float
    tokens_per_s_overall: float
    window_s: float
    latency: dict[str, Percentiles]  # wait, service, ttft, e2e of completed requests
    active: list[ActiveRequest]
    recent: list[RecentRequest]  # newest first
    health: Health
    kv: KVUsage | None = None  # None: no paged KV cache (the padded one, or none)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (NaN becomes None)."""
        return _nan_to_none(asdict(self))


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def format_seconds(x: float | None, missing: str = "–") -> str:
    """A duration for people: '850 ms' below a second, '2.35 s' above; `missing` for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def format_number(x: float | None, spec: str, missing: str = "–") -> str:
    """`format(x, spec)`, or `missing` for None or NaN (a rate before the first completion, say)."""
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def preview(text: str, n: int = 60) -> str:
    """A one-line preview of at most n characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"
