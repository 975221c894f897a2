"""`RequestQueue`: admission, the request lifecycle and the step loop in front of one model.

The worker is a step loop: ask the scheduler for the next step, run it on the model in a thread
(`asyncio.to_thread`, so the event loop and any live panel on it stay responsive), then postprocess
on the loop — finished requests complete, failed ones fail. With nothing to do it sleeps on an
asyncio.Event until work arrives (no polling). Requests wait in arrival order; the scheduler
decides which of them run next (the default serves them one at a time, first come first served).
The numbers (`stats()`, `timeline()`) are kept by a `Recorder` that `_move` feeds.

One model serves one running queue: starting a second queue on the same model stops the first
(with a warning), so re-running a cell that creates and starts a queue never leaves an orphan
worker competing for the model.

Several workers can share the one waiting line: `RequestQueue(model, workers=3)` (threads sharing
one model, whose steps may overlap) and `RequestQueue([m1, m2, m3])` (one worker per model copy).
Each worker has its own runner and its own copy of the scheduler; `processing` counts them all.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import pandas as pd

from queuelab.checks import positive, positive_int
from queuelab.engine import workers as workers_
from queuelab.engine.recorder import Recorder
from queuelab.engine.runner import StepOutcome, StepRunner, kv_usage, step_log
from queuelab.engine.scheduling import Scheduler, SequentialScheduler, Step, Wait, WaitingLine
from queuelab.errors import QueueStateError, SchedulerError
from queuelab.generation import Completion, GenerationParams
from queuelab.metrics import Health, Histogram, KVUsage, QueueStats
from queuelab.models.base import LanguageModel
from queuelab.request import Request, RequestStatus

S = RequestStatus


class QueueState(StrEnum):
    """created → running → stopping → stopped; broken if the worker died. Compares equal to its value."""

    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BROKEN = "broken"


class RequestQueue:
    """A request queue with one worker; `scheduler` decides how requests share the model (default: one
    at a time, in arrival order).

    `workers=N` serves the waiting line with N workers that share `model`, each running its own
    steps in its own thread, overlapping on the model. A list of models, `RequestQueue([m1, m2, m3])`,
    gives each copy its own worker. Either way `processing` can reach N, and each worker keeps its
    own copy of `scheduler`. `sample_interval`, `timeline_max_rows`, `window_s` and `recent` size what the recorder keeps.
    """

    def __init__(
        self,
        model: LanguageModel | Sequence[LanguageModel],
        *,
        workers: int = 1,
        max_queue_size: int = 1000,
        request_timeout: float | None = None,
        scheduler: Scheduler | None = None,
        sample_interval: float = 0.25,
        timeline_max_rows: int = 14_400,
        window_s: float = 10.0,
        recent: int = 20,
    ) -> None:
        positive_int("max_queue_size", max_queue_size)
        if request_timeout is not None:
            positive("request_timeout (seconds, or None)", request_timeout)
        positive("sample_interval (seconds)", sample_interval)
        models = workers_.models_for_workers(model, workers)
        #: The model the queue tokenizes with and reports; with copies, the first of them.
        self.model = models[0]
        #: One per worker: the same model N times (threads sharing it), or N copies.
        self.models = models
        self.max_queue_size = max_queue_size
        self.request_timeout = request_timeout
        self.scheduler = scheduler or SequentialScheduler()
        # Schedulers may keep state (the adaptive one's limit): every worker decides with its own copy.
        self._schedulers = [self.scheduler] + [copy.deepcopy(self.scheduler) for _ in models[1:]]
        self.sample_interval = sample_interval
        self._waiting: WaitingLine = OrderedDict()
        self._active: dict[int, Request] = {}
        self._ids = itertools.count(1)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.recorder = Recorder(lambda: (len(self._waiting), len(self._active)), window_s=window_s,
                                 recent=recent, sample_interval=sample_interval,
                                 timeline_max_rows=timeline_max_rows)
        self._state = QueueState.CREATED
        self._error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None  # the first worker (the only one by default)
        self._workers: list[asyncio.Task[None]] = []
        self._model_info: dict[str, Any] = {}
        self._runners = [StepRunner(m) for m in models]
        self._runner = self._runners[0]
        self._restore_concurrency: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def state(self) -> QueueState:
        """created → running → stopping → stopped; broken if the worker died."""
        return self._state

    @property
    def running(self) -> bool:
        return self._state is QueueState.RUNNING

    async def start(self) -> RequestQueue:
        """Start the workers and the recorder's timeline. Idempotent while running."""
        if self._state is QueueState.RUNNING:
            return self
        if self._state is not QueueState.CREATED:
            raise QueueStateError(f"this queue is {self._state} and cannot be restarted: create a new RequestQueue")
        for previous in workers_.owners(self.models, self):
            if previous.running:
                warnings.warn("another RequestQueue was running on this model; stopping it (cancelling what it "
                              "had queued). Stop queues with `await queue.stop()` or use `async with queue:`.",
                              stacklevel=2)
                await previous.stop(drain=False)
        self._loop = asyncio.get_running_loop()
        self._model_info = workers_.describe(self.models)
        self._wakeup = asyncio.Event()
        self._restore_concurrency = workers_.allow_overlap(self.models)
        self._state = QueueState.RUNNING
        workers_.claim(self.models, self)
        self._workers = [self._loop.create_task(self._work(i), name=f"queuelab-worker-{id(self):x}-{i}")
                         for i in range(len(self.models))]
        self._worker = self._workers[0]
        for task in self._workers:
            task.add_done_callback(self._on_worker_exit)
        self.recorder.start(self._loop, time.perf_counter(), name=f"queuelab-ticker-{id(self):x}")
        return self

    @property
    def workers(self) -> int:
        """How many workers serve the FIFO (and so the most requests `processing` can show with one at a time each)."""
        return len(self.models)

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
            if len(self._workers) == 1:
                await asyncio.shield(self._worker)
            else:  # wait for all of them; one that dies is reported by _on_worker_exit, not raised here
                await asyncio.shield(asyncio.wait(self._workers))
            if self._state is QueueState.STOPPING:
                self._state = QueueState.STOPPED
        await self.recorder.stop(time.perf_counter)
        self._release_models()

    def _release_models(self) -> None:
        if self._restore_concurrency is not None and all(t.done() for t in self._workers):
            self.model.concurrent_steps, self._restore_concurrency = self._restore_concurrency, None
        workers_.release(self.models, self)

    async def __aenter__(self) -> RequestQueue:
        return await self.start()

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        # Leaving on an error or interrupt should not wait for a long queue to drain.
        await self.stop(drain=exc_type is None)

    # -- the worker: schedule → run the step in the model thread → postprocess on the loop ----------
    async def _work(self, i: int = 0) -> None:
        runner, scheduler = self._runners[i], self._schedulers[i]
        while step := await self._next_step(runner, scheduler):
            outcome = await asyncio.to_thread(runner.run, step, interruptible=scheduler.admits_while_running)
            self._postprocess(outcome)

    async def _next_step(self, runner: StepRunner, scheduler: Scheduler) -> Step | None:
        """Wait (without polling) until the scheduler has a step; None once stopping with nothing left.

        With several workers, each decides for its own runner from the one shared waiting line; the
        decision and the taking happen on the loop without an await between them, so no two workers
        take the same request."""
        assert self._wakeup is not None
        while True:
            runner.interrupt.clear()  # before deciding: an arrival after this point interrupts the step
            decision = scheduler.schedule(self._waiting, runner.running, time.perf_counter())
            if isinstance(decision, Step) and decision:
                self._begin(decision, runner, scheduler)
                return decision
            if not self._waiting and not runner.running and self._state is not QueueState.RUNNING:
                self._wakeup.set()  # pass the news on: another worker may be waiting on the same event
                return None
            until = decision.until if isinstance(decision, Wait) else None
            if until is None and self._waiting and not runner.running:
                raise SchedulerError(f"{scheduler!r} waits forever with {len(self._waiting)} requests waiting "
                                   "and nothing running")
            self._wakeup.clear()
            timeout = None if until is None else max(0.0, until - time.perf_counter())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    def _begin(self, step: Step, runner: StepRunner, scheduler: Scheduler) -> None:
        """Check the scheduler's step and move the requests it admits to PROCESSING."""
        running = set(map(id, runner.running))
        for req in step.prefill:
            if req.status is not S.QUEUED or req.id in self._waiting:
                raise SchedulerError(f"{scheduler!r} admitted request {req.id} ({req.status}) without taking "
                                   "it from the waiting line")
        if any(id(r) not in running for r in step.decode):
            raise SchedulerError(f"{scheduler!r} asked to decode a request that is not running")
        now = time.perf_counter()
        for req in step.prefill:
            self._move(req, S.PROCESSING, now)

    def _postprocess(self, outcome: StepOutcome) -> None:
        # Finished when the loop hands the answer over, not when the model thread produced it: the
        # hop back to the loop is time the server is still busy with this request (and a caller
        # cannot have the answer before it), so service time counts it and queueing theory's
        # utilisation ρ = λ·S is the server's true occupancy.
        now = time.perf_counter()
        for req in outcome.finished:
            seq = req.sequence
            assert seq is not None and seq.finished_at is not None
            if seq.first_token_at is not None:
                _stamp_first_token(req, seq.first_token_at)
            self._move(req, S.COMPLETED, now, completion=seq.completion())
        for req in outcome.failed:
            self._move(req, S.FAILED, now, error=outcome.error)

    # -- requests -------------------------------------------------------------------------------
    def submit(self, prompt: Any, *, stream: bool = False, chat_template: bool = True, **gen_kwargs: Any) -> Request:
        """Add a request and return it at once. Refused requests come back REJECTED, with a reason.

        With stream=True, `async for piece in request.stream()` yields the text as it is generated.
        `chat_template=False` gives an instruct model the prompt as raw text (see `LanguageModel.new_sequence`).
        """
        self._check_loop()
        now = time.perf_counter()
        req = Request(id=next(self._ids), prompt=prompt, params=None, arrived=now)
        if stream is True:
            req.enable_streaming()
        self.recorder.submitted()
        refusal = self._admit(req, gen_kwargs, chat_template, stream)
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
            for runner in self._runners:
                runner.interrupt.set()  # a running batch may take it at the next step
        return req

    async def generate(self, prompt: Any, **gen_kwargs: Any) -> Completion:
        """Submit and wait for the completion (raises RequestError subclasses if it does not complete)."""
        return await self.submit(prompt, **gen_kwargs)

    def cancel(self, request: Request) -> bool:
        """Cancel a QUEUED request of this queue (True). A PROCESSING one is not interrupted (see
        `stop`), and another queue's request is not this queue's to cancel: False."""
        # By identity, not id: ids count from 1 in every queue, so another queue's request can carry
        # the id of one waiting here.
        if request.status is not S.QUEUED or self._waiting.get(request.id) is not request:
            return False
        del self._waiting[request.id]
        self._move(request, S.CANCELLED, time.perf_counter(), error="cancelled by caller")
        return True

    def _admit(self, req: Request, gen_kwargs: dict[str, Any], chat_template: Any = True,
               stream: Any = False) -> tuple[str, str] | None:
        """(refusal code, reason) if `req` is refused at the door, or None to admit it."""
        for name, flag in (("stream", stream), ("chat_template", chat_template)):
            if not isinstance(flag, bool):  # "yes" or 1 is truthy but not what the caller was asked for
                return "invalid_request", f"invalid request: {name} must be True or False, got {flag!r}"
        if self._state is not QueueState.RUNNING:
            return "unavailable", {
                QueueState.CREATED: "queue is not started: `await queue.start()` or use `async with queue:`",
                QueueState.BROKEN: f"queue worker died: {self._error}",
            }.get(self._state, "queue is stopped")
        assert self._loop is not None  # set by start(), before the state is RUNNING
        try:
            req.params = GenerationParams.from_kwargs(gen_kwargs)
            # Validated and tokenized once, here; the sequence travels to the model as it is.
            req.sequence = self.model.new_sequence(req.prompt, req.params, on_token=req.token_callback(self._loop),
                                                   chat_template=chat_template)
            req.prompt_tokens = req.sequence.prompt_tokens
        except ValueError as e:
            return "invalid_request", f"invalid request: {e}"
        except Exception as e:  # noqa: BLE001 - a tokenizer's own error: still this request's input, still refused
            # Every submitted request must end in a terminal state; an exception escaping here would
            # leave it counted as submitted and never finished.
            return "invalid_request", f"invalid request: the model could not read it ({type(e).__name__}: {e})"
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

    # -- the one place statuses change ---------------------------------------------------------------
    def _move(self, req: Request, status: RequestStatus, now: float, *,
              completion: Completion | None = None, error: str | None = None) -> None:
        req.advance(status, now, completion=completion, error=error)
        if status is S.PROCESSING:
            self._active[req.id] = req
        timer = self._timers.pop(req.id, None) if status is not S.QUEUED else None
        if timer is not None:
            timer.cancel()
        if status.terminal:
            self._active.pop(req.id, None)
            self.recorder.ended(req, now)

    def _on_worker_exit(self, task: asyncio.Task[None]) -> None:
        if self._state is QueueState.BROKEN:
            return  # another worker's death already settled everything
        if task.cancelled():
            error = "worker task was cancelled"
        elif task.exception() is not None:
            e = task.exception()
            error = f"{type(e).__name__}: {e}"
        else:
            return  # a normal exit after stop()
        # No silent hang: say what happened, and settle every request the dead worker owned. With
        # several workers, the others stop too: a queue is running or broken, never half of each.
        self._error, self._state = error, QueueState.BROKEN
        for other in self._workers:
            if other is not task:
                other.cancel()
        now = time.perf_counter()
        for req in list(self._active.values()):
            self._move(req, S.FAILED, now, error=f"queue worker died: {error}")
        self._cancel_waiting(f"queue worker died: {error}")
        self.recorder.ticker.cancel()

    # -- observation: read-only views of the recorder and the runners --------------------------
    def timeline(self, window_s: float | None = None) -> pd.DataFrame:
        """One row per timeline tick: t, elapsed, queue_depth, processing, totals, rates, loop lag.

        `window_s` keeps only the last so many seconds: what a live plot needs, built without
        copying a long history on the event loop.
        """
        return self.recorder.timeline(window_s)

    def steps(self) -> pd.DataFrame:
        """One row per model step: t, elapsed, batch_size, prefill_tokens, decode_tokens, duration_s,
        kv_tokens and pad_tokens (KV-cache slots held after the step, and how many of them are padding).

        With several workers, every worker's steps in time order, and a `worker` column (0, 1, …)."""
        return step_log(self._runners, since=self.recorder.started_at or 0.0)

    @property
    def step_count(self) -> int:
        """Model steps run so far (the step log keeps the last 100,000 per worker)."""
        return sum(r.step_count for r in self._runners)

    @property
    def queue_size(self) -> int:
        return len(self._waiting)

    @property
    def processing(self) -> int:
        return len(self._active)

    def stats(self) -> QueueStats:
        """A consistent snapshot of counts, rates, latency percentiles, the active requests and health."""
        return self.recorder.stats(time.perf_counter(), queue_size=len(self._waiting),
                                   active=list(self._active.values()), health=self.health(), kv=self.kv_usage())

    def kv_usage(self) -> KVUsage | None:
        """KV blocks in use over every worker's paged cache (None when the cache is not paged)."""
        return kv_usage(self._runners)

    def histograms(self) -> dict[str, Histogram]:
        """Cumulative latency histograms (wait, service, ttft, e2e) of completed requests, for Prometheus."""
        return self.recorder.histograms

    @property
    def total_tokens(self) -> int:
        """Tokens generated for completed requests since start."""
        return self.recorder.counts["tokens"]

    @property
    def mean_service_s(self) -> float | None:
        """Mean service time of every completed request so far (None before the first); O(1)."""
        h = self.recorder.histograms["service"]
        return h.total / h.count if h.count else None

    def health(self) -> Health:
        """State, worker, loop lag and model: cheap, without the rest of `stats()`."""
        alive = bool(self._workers) and not any(t.done() for t in self._workers)
        return Health(state=self._state, worker_alive=alive,
                      loop_lag_s=self.recorder.ticker.loop_lag_s, model=self._model_info, error=self._error)

    def __repr__(self) -> str:
        return (f"<RequestQueue {self._state} model={getattr(self.model, 'name', '?')!r} "
                f"queued={len(self._waiting)} processing={len(self._active)}>")


def _stamp_first_token(req: Request, t: float) -> None:
    if req.first_token is None:
        req.first_token = t
