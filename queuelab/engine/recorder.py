"""`Recorder`: the queue's numbers, fed by the one method that changes a request's status.

Counts by status, generated tokens, sliding-window rates, latency percentiles and cumulative
histograms of completed requests, the most recent requests, and the timeline (one row per tick of
a `TimelineTicker`, which also measures the event loop's lag). It reads requests; it changes none.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Collection

import pandas as pd

from queuelab.engine.ticker import TimelineTicker
from queuelab.metrics import (
    ActiveRequest,
    Health,
    Histogram,
    KVUsage,
    LatencyLog,
    QueueStats,
    RateWindow,
    RecentRequest,
    preview,
)
from queuelab.request import Request, RequestStatus

#: (waiting, processing) right now: what the timeline samples from the queue at each tick.
Gauges = Callable[[], tuple[int, int]]


class Recorder:
    """Everything `stats()`, `timeline()` and `/metrics` report, kept as requests end."""

    def __init__(self, gauges: Gauges, *, window_s: float = 10.0, recent: int = 20,
                 sample_interval: float = 0.25, timeline_max_rows: int = 14_400) -> None:
        self._gauges = gauges
        self.counts: Counter[str] = Counter()
        self.rates = RateWindow(window_s)
        self.latency = LatencyLog()
        self.recent: deque[Request] = deque(maxlen=recent)
        self.ticker = TimelineTicker(sample_interval, self._timeline_row, timeline_max_rows)
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -- fed by the queue ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, now: float, name: str) -> None:
        self.started_at = now
        self.ticker.start(loop, name=name)

    async def stop(self, now: Callable[[], float]) -> None:
        """Stop ticking and record the final state once, so plots end where the run ended."""
        await self.ticker.stop()
        if self.stopped_at is None and self.started_at is not None:
            self.stopped_at = now()
            self.ticker.record(self.stopped_at, 0.0)

    def submitted(self) -> None:
        self.counts["submitted"] += 1

    def ended(self, req: Request, now: float) -> None:
        """`req` just reached a terminal status at `now`."""
        assert req.status is not None
        self.counts[req.status.value] += 1
        self.recent.append(req)
        c = req.completion
        if req.status is RequestStatus.COMPLETED and c is not None:
            self.counts["tokens"] += c.completion_tokens
            self.rates.add(now, c.completion_tokens)
            self.latency.add(wait=req.wait, service=req.service, ttft=req.ttft, e2e=req.e2e)

    # -- read by observers --------------------------------------------------------------------
    def _timeline_row(self, now: float, lag: float) -> tuple[float, ...]:
        waiting, processing = self._gauges()
        req_s, tok_s = self.rates.rates(now, self.started_at or now)
        c = self.counts
        return (now, now - (self.started_at or now), waiting, processing,
                c["submitted"], c["completed"], c["failed"], req_s, tok_s, lag)

    def timeline(self, window_s: float | None = None) -> pd.DataFrame:
        return self.ticker.frame(window_s)

    def stats(self, now: float, *, queue_size: int, active: Collection[Request], health: Health,
              kv: KVUsage | None = None) -> QueueStats:
        """A snapshot at `now` (at the stop time, once stopped)."""
        now = self.stopped_at or now
        start = self.started_at or now
        uptime = now - start
        req_s, tok_s = self.rates.rates(now, start)
        c = self.counts
        return QueueStats(
            uptime_s=uptime, queue_size=queue_size, processing=len(active), submitted=c["submitted"], completed=c["completed"], failed=c["failed"],
            cancelled=c["cancelled"], rejected=c["rejected"], req_per_s=req_s, tokens_per_s=tok_s,
            req_per_s_overall=c["completed"] / uptime if uptime > 0 else 0.0,
            tokens_per_s_overall=c["tokens"] / uptime if uptime > 0 else 0.0,
            window_s=self.rates.window_s, latency=self.latency.summary(),
            active=[ActiveRequest(r.id, preview(r.prompt), now - (r.started or now), r.tokens_streamed)
                    for r in active],
            recent=[_recent(r) for r in reversed(self.recent)],
            health=health, kv=kv,
        )

    @property
    def histograms(self) -> dict[str, Histogram]:
        return self.latency.histograms


def _recent(r: Request) -> RecentRequest:
    c = r.completion
    return RecentRequest(r.id, r.status.value if r.status else "?", r.wait, r.e2e,
                         c.completion_tokens if c else 0, preview(c.text if c else (r.error or "")))
