"""`RequestQueue`: an asyncio FIFO in front of one model, served by one worker task.

The worker is a step loop: ask the scheduler for the next step, run it on the model in a thread
(`asyncio.to_thread`, so the event loop and any live panel on it stay responsive), then postprocess
on the loop — finished requests complete, failed ones fail. With nothing to do it sleeps on an
asyncio.Event until work arrives (no polling). The sequential scheduler makes this the one-at-a-time
baseline; batching schedulers use the same loop.

One model serves one running queue: starting a second queue on the same model stops the first
(with a warning). That makes the common notebook mistake, re-running a cell that creates and
starts a queue, safe: the old worker does not linger as an orphan competing for the model.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings
import weakref
from collections import Counter, OrderedDict, deque
from enum import StrEnum
from typing import Any

from .errors import QueueStateError, SchedulerError
from .generation import Completion, GenerationParams
from .metrics import (
    ActiveRequest,
    Health,
    Histogram,
    LatencyLog,
    QueueStats,
    RateWindow,
    RecentRequest,
    preview,
)
from .model import LanguageModel
from .request import Request, RequestStatus
from .runner import StepOutcome, StepRunner
from .sampler import Sampler
from .scheduling import Scheduler, SequentialScheduler, Step, Wait, WaitingLine

S = RequestStatus


class QueueState(StrEnum):
    """created → running → stopping → stopped; broken if the worker died. Compares equal to its value."""

    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BROKEN = "broken"

_RUNNING: weakref.WeakKeyDictionary[LanguageModel, RequestQueue] = weakref.WeakKeyDictionary()


class RequestQueue:
    """FIFO request queue with one worker; `scheduler` decides how requests share the model (default: one at a time)."""

    def __init__(
        self,
        model: LanguageModel,
        *,
        max_queue_size: int = 1000,
        request_timeout: float | None = None,
        scheduler: Scheduler | None = None,
        sample_interval: float = 0.25,
        timeline_max_rows: int = 14_400,
        window_s: float = 10.0,
        recent: int = 20,
    ) -> None:
        if not isinstance(max_queue_size, int) or isinstance(max_queue_size, bool) or max_queue_size < 1:
            raise ValueError(f"max_queue_size must be an int >= 1, got {max_queue_size!r}")
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds or None, got {request_timeout!r}")
        if not sample_interval > 0:
            raise ValueError(f"sample_interval must be > 0 seconds, got {sample_interval!r}")
        if not hasattr(model, "generate") or not hasattr(model, "new_sequence"):
            raise ValueError(f"model must be a queuelab LanguageModel (ql.load_model / ql.SimulatedModel), got {model!r}")
        self.model = model
        self.max_queue_size = max_queue_size
        self.request_timeout = request_timeout
        self.scheduler = scheduler or SequentialScheduler()
        self.sample_interval = sample_interval
        self._waiting: WaitingLine = OrderedDict()
        self._active: dict[int, Request] = {}
        self._recent: deque[Request] = deque(maxlen=recent)
        self._counts: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._rates = RateWindow(window_s)
        self._latency = LatencyLog()
        self._sampler = Sampler(sample_interval, self._timeline_row, timeline_max_rows)
        self._state = QueueState.CREATED
        self._error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._model_info: dict[str, Any] = {}
        self._runner = StepRunner(model)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def state(self) -> QueueState:
        """created → running → stopping → stopped; broken if the worker died."""
        return self._state

    @property
    def running(self) -> bool:
        return self._state is QueueState.RUNNING

    async def start(self) -> RequestQueue:
        """Start the worker and the sampler. Idempotent while running."""
        if self._state is QueueState.RUNNING:
            return self
        if self._state is not QueueState.CREATED:
            raise QueueStateError(f"this queue is {self._state} and cannot be restarted: create a new RequestQueue")
        previous = _RUNNING.get(self.model)
        if previous is not None and previous is not self and previous.running:
            warnings.warn("another RequestQueue was running on this model; stopping it (cancelling what it had "
                          "queued). Stop queues with `await queue.stop()` or use `async with queue:`.", stacklevel=2)
            await previous.stop(drain=False)
        self._loop = asyncio.get_running_loop()
        self._model_info = self.model.info()
        self._wakeup = asyncio.Event()
        self._started_at = time.perf_counter()
        self._state = QueueState.RUNNING
        _RUNNING[self.model] = self
        self._worker = self._loop.create_task(self._work(), name=f"queuelab-worker-{id(self):x}")
        self._worker.add_done_callback(self._on_worker_exit)
        self._sampler.start(self._loop, name=f"queuelab-sampler-{id(self):x}")
        return self

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting requests; finish what is queued (drain) or cancel it; wait for the worker.

        The request being processed always finishes: its model call runs in a thread that cannot be
        interrupted safely mid-forward-pass. Idempotent.
        """
        if self._state is QueueState.CREATED:
            self._state = QueueState.STOPPED
            return
        if self._state in (QueueState.RUNNING, QueueState.STOPPING):
            self._state = QueueState.STOPPING
            if not drain:
                self._cancel_waiting("shutdown")
            assert self._wakeup is not None and self._worker is not None
            self._wakeup.set()
            # shield: interrupting stop() (Ctrl-C in a notebook) must not kill the worker mid-request.
            await asyncio.shield(self._worker)
            if self._state is QueueState.STOPPING:
                self._state = QueueState.STOPPED
        await self._stop_sampler()
        if _RUNNING.get(self.model) is self:
            del _RUNNING[self.model]

    async def __aenter__(self) -> RequestQueue:
        return await self.start()

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        # Leaving on an error or interrupt should not wait for a long queue to drain.
        await self.stop(drain=exc_type is None)

    # -- requests -------------------------------------------------------------------------------
    def submit(self, prompt: Any, *, stream: bool = False, **gen_kwargs: Any) -> Request:
        """Add a request and return it at once. Refused requests come back REJECTED, with a reason.

        With stream=True, `async for piece in request.stream()` yields the text as it is generated.
        """
        self._check_loop()
        now = time.perf_counter()
        req = Request(id=next(self._ids), prompt=prompt, params=None, arrived=now)
        if stream:
            req.enable_streaming()
        self._counts["submitted"] += 1
        refusal = self._admit(req, gen_kwargs)
        if refusal is not None:
            req.refusal, reason = refusal
            self._move(req, S.REJECTED, now, error=reason)
            return req
        self._move(req, S.QUEUED, now)
        self._waiting[req.id] = req
        if self.request_timeout is not None:
            assert self._loop is not None
            self._timers[req.id] = self._loop.call_later(self.request_timeout, self._expire, req)
        assert self._wakeup is not None
        self._wakeup.set()
        if self.scheduler.admits_while_running:
            self._runner.interrupt.set()  # a running batch may take it at the next step
        return req

    async def generate(self, prompt: Any, **gen_kwargs: Any) -> Completion:
        """Submit and wait for the completion (raises RequestError subclasses if it does not complete)."""
        return await self.submit(prompt, **gen_kwargs)

    def cancel(self, request: Request) -> bool:
        """Cancel a QUEUED request (True). A PROCESSING one is not interrupted (see `stop`): False."""
        if request.status is not S.QUEUED or self._waiting.pop(request.id, None) is None:
            return False
        self._move(request, S.CANCELLED, time.perf_counter(), error="cancelled by caller")
        return True

    def _admit(self, req: Request, gen_kwargs: dict[str, Any]) -> tuple[str, str] | None:
        """(refusal code, reason) if `req` is refused at the door, or None to admit it."""
        if self._state is not QueueState.RUNNING:
            return "unavailable", {
                QueueState.CREATED: "queue is not started: `await queue.start()` or use `async with queue:`",
                QueueState.BROKEN: f"queue worker died: {self._error}",
            }.get(self._state, "queue is stopped")
        try:
            req.params = GenerationParams.from_kwargs(gen_kwargs)
            # Validated and tokenized once, here; the sequence travels to the model as it is.
            req.sequence = self.model.new_sequence(req.prompt, req.params, on_token=self._token_callback(req))
            req.prompt_tokens = req.sequence.prompt_tokens
        except ValueError as e:
            return "invalid_request", f"invalid request: {e}"
        if len(self._waiting) >= self.max_queue_size:
            return "queue_full", f"queue full: {len(self._waiting)} requests waiting (max_queue_size={self.max_queue_size})"
        return None

    def _check_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise QueueStateError("submit() must be called from async code running on the queue's event loop "
                               "(a notebook cell or a coroutine); scripts: see ql.run()") from None
        if self._loop is not None and loop is not self._loop:
            raise QueueStateError("this queue was started on a different event loop")

    def _expire(self, req: Request) -> None:
        if self._waiting.pop(req.id, None) is not None:
            self._move(req, S.CANCELLED, time.perf_counter(), error="timeout")

    def _cancel_waiting(self, reason: str) -> None:
        now = time.perf_counter()
        while self._waiting:
            _, req = self._waiting.popitem(last=False)
            self._move(req, S.CANCELLED, now, error=reason)

    # -- the one place statuses change, and the bookkeeping that goes with it -------------------------------
    def _move(self, req: Request, status: RequestStatus, now: float, *,
              completion: Completion | None = None, error: str | None = None) -> None:
        req.advance(status, now, completion=completion, error=error)
        if status is S.PROCESSING:
            self._active[req.id] = req
        timer = self._timers.pop(req.id, None) if status is not S.QUEUED else None
        if timer is not None:
            timer.cancel()
        if not status.terminal:
            return
        self._active.pop(req.id, None)
        self._counts[status.value] += 1
        self._recent.append(req)
        if status is S.COMPLETED and completion is not None:
            self._counts["tokens"] += completion.completion_tokens
            self._rates.add(now, completion.completion_tokens)
            self._latency.add(wait=req.wait, service=req.service, ttft=req.ttft, e2e=req.e2e)

    # -- the worker: schedule → run the step in the model thread → postprocess on the loop ----------
    async def _work(self) -> None:
        while step := await self._next_step():
            outcome = await asyncio.to_thread(self._runner.run, step,
                                              interruptible=self.scheduler.admits_while_running)
            self._postprocess(outcome)

    async def _next_step(self) -> Step | None:
        """Wait (without polling) until the scheduler has a step; None once stopping with nothing left."""
        assert self._wakeup is not None
        while True:
            self._runner.interrupt.clear()  # before deciding: an arrival after this point interrupts the step
            decision = self.scheduler.schedule(self._waiting, self._runner.running, time.perf_counter())
            if isinstance(decision, Step) and decision:
                self._begin(decision)
                return decision
            if not self._waiting and not self._runner.running and self._state is not QueueState.RUNNING:
                return None
            until = decision.until if isinstance(decision, Wait) else None
            if until is None and self._waiting and not self._runner.running:
                raise SchedulerError(f"{self.scheduler!r} waits forever with {len(self._waiting)} requests waiting "
                                   "and nothing running")
            self._wakeup.clear()
            timeout = None if until is None else max(0.0, until - time.perf_counter())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    def _begin(self, step: Step) -> None:
        """Check the scheduler's step and move the requests it admits to PROCESSING."""
        running = set(map(id, self._runner.running))
        for req in step.prefill:
            if req.status is not S.QUEUED or req.id in self._waiting:
                raise SchedulerError(f"{self.scheduler!r} admitted request {req.id} ({req.status}) without taking "
                                   "it from the waiting line")
        if any(id(r) not in running for r in step.decode):
            raise SchedulerError(f"{self.scheduler!r} asked to decode a request that is not running")
        now = time.perf_counter()
        for req in step.prefill:
            self._move(req, S.PROCESSING, now)

    def _postprocess(self, outcome: StepOutcome) -> None:
        for req in outcome.finished:
            seq = req.sequence
            assert seq is not None and seq.finished_at is not None
            if seq.first_token_at is not None:
                _stamp_first_token(req, seq.first_token_at)
            self._move(req, S.COMPLETED, seq.finished_at, completion=seq.completion())
        now = time.perf_counter()
        for req in outcome.failed:
            self._move(req, S.FAILED, now, error=outcome.error)

    def _token_callback(self, req: Request) -> Any:
        loop = self._loop
        assert loop is not None

        def on_token(piece: str) -> None:
            # Runs in the model's thread. `tokens_streamed` and `first_token` are plain values that
            # only this thread writes (first_token once, the clock reading where the token appeared)
            # and the loop only reads, so the loop is not woken per token — only for a caller that
            # asked for the text as a stream.
            req.tokens_streamed += 1
            if req.first_token is None and req.sequence is not None:
                req.first_token = req.sequence.first_token_at  # set by Sequence.append before any piece
            if streaming:
                loop.call_soon_threadsafe(req.push_piece, piece)

        streaming = req._pieces is not None
        return on_token

    def _on_worker_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            error = "worker task was cancelled"
        elif task.exception() is not None:
            e = task.exception()
            error = f"{type(e).__name__}: {e}"
        else:
            return  # a normal exit after stop()
        # No silent hang: say what happened, and settle every request the dead worker owned.
        self._error, self._state = error, QueueState.BROKEN
        now = time.perf_counter()
        for req in list(self._active.values()):
            self._move(req, S.FAILED, now, error=f"queue worker died: {error}")
        self._cancel_waiting(f"queue worker died: {error}")
        self._sampler.cancel()

    # -- observation ------------------------------------------------------------------------------
    def _timeline_row(self, now: float, lag: float) -> tuple[float, ...]:
        req_s, tok_s = self._rates.rates(now, self._started_at or now)
        c = self._counts
        return (now, now - (self._started_at or now), len(self._waiting), len(self._active),
                c["submitted"], c["completed"], c["failed"], req_s, tok_s, lag)

    async def _stop_sampler(self) -> None:
        await self._sampler.stop()
        if self._stopped_at is None and self._started_at is not None:
            self._stopped_at = time.perf_counter()
            self._sampler.record(self._stopped_at, 0.0)  # the final state, so plots end where the run ended

    def timeline(self, window_s: float | None = None):  # -> pandas.DataFrame
        """One row per sampler tick: t, elapsed, queue_depth, processing, totals, rates, loop lag.

        `window_s` keeps only the last so many seconds: what a live plot needs, built without
        copying a long history on the event loop.
        """
        return self._sampler.frame(window_s)

    def steps(self):  # -> pandas.DataFrame
        """One row per model step: t, elapsed, batch_size, prefill_tokens, decode_tokens, duration_s,
        kv_tokens and pad_tokens (KV-cache slots held after the step, and how many of them are padding)."""
        return self._runner.steps(self._started_at or 0.0)

    @property
    def step_count(self) -> int:
        """Model steps run so far (the step log keeps the last 100,000)."""
        return self._runner.step_count

    @property
    def queue_size(self) -> int:
        return len(self._waiting)

    @property
    def processing(self) -> int:
        return len(self._active)

    def stats(self) -> QueueStats:
        """A consistent snapshot of counts, rates, latency percentiles, the active request and health."""
        now = self._stopped_at or time.perf_counter()
        start = self._started_at or now
        uptime = now - start
        req_s, tok_s = self._rates.rates(now, start)
        c = self._counts
        return QueueStats(
            uptime_s=uptime, queue_size=len(self._waiting), processing=len(self._active),
            submitted=c["submitted"], completed=c["completed"], failed=c["failed"],
            cancelled=c["cancelled"], rejected=c["rejected"], req_per_s=req_s, tokens_per_s=tok_s,
            req_per_s_overall=c["completed"] / uptime if uptime > 0 else 0.0,
            tokens_per_s_overall=c["tokens"] / uptime if uptime > 0 else 0.0,
            window_s=self._rates.window_s, latency=self._latency.summary(),
            active=[ActiveRequest(r.id, preview(r.prompt), now - (r.started or now), r.tokens_streamed)
                    for r in self._active.values()],
            recent=[_recent(r) for r in reversed(self._recent)],
            health=self.health(),
        )

    def histograms(self) -> dict[str, Histogram]:
        """Cumulative latency histograms (wait, service, ttft, e2e) of completed requests, for Prometheus."""
        return self._latency.histograms

    @property
    def mean_service_s(self) -> float | None:
        """Mean service time of every completed request so far (None before the first); O(1)."""
        h = self._latency.histograms["service"]
        return h.total / h.count if h.count else None

    def health(self) -> Health:
        """State, worker, loop lag and model: cheap, without the rest of `stats()`."""
        return Health(state=self._state, worker_alive=self._worker is not None and not self._worker.done(),
                      loop_lag_s=self._sampler.loop_lag_s, model=self._model_info, error=self._error)

    def __repr__(self) -> str:
        return (f"<RequestQueue {self._state} model={getattr(self.model, 'name', '?')!r} "
                f"queued={len(self._waiting)} processing={len(self._active)}>")


def _stamp_first_token(req: Request, t: float) -> None:
    if req.first_token is None:
        req.first_token = t


def _recent(r: Request) -> RecentRequest:
    c = r.completion
    return RecentRequest(r.id, r.status.value if r.status else "?", r.wait, r.e2e,
                         c.completion_tokens if c else 0, preview(c.text if c else (r.error or "")))
