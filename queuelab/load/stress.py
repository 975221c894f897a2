"""Stress experiments: incremental waves, rapid-fire floods, open-loop arrivals, closed-loop users.

Every experiment returns a `StressRun`. Open-loop generators send on schedule whatever the queue does
(they never wait on the model), which is what makes queue growth visible; each request records when
it was scheduled and when it was actually sent, and the summary reports the difference.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict, Unpack

import numpy as np
import pandas as pd

from queuelab.checks import non_negative, positive_int
from queuelab.engine.request_queue import RequestQueue
from queuelab.engine.scheduling import Scheduler
from queuelab.generation import GenerationParams
from queuelab.load import arrivals
from queuelab.load.progress import Progress, as_progress
from queuelab.load.stress_run import REQUEST_COLUMNS, StressRun, summaries
from queuelab.load.targets import QueueTarget, Target, as_target
from queuelab.metrics import TIMELINE_COLUMNS
from queuelab.models.base import LanguageModel
from queuelab.prompts import choose, choose_caps
from queuelab.request import Request


def __getattr__(name: str) -> Any:
    if name == "HTTPTarget":  # needs httpx (the server extra): imported when asked for
        from queuelab.load.http_target import HTTPTarget

        return HTTPTarget
    raise AttributeError(f"module 'queuelab.load.stress' has no attribute {name!r}")


__all__ = ["incremental", "rapid_fire", "poisson", "constant", "gamma", "concurrency", "each_scheduler", "summaries",
           "StressRun", "Target", "QueueTarget", "Progress"]

WaveCallback = Callable[[int, int], None]
DoneCallback = Callable[[Request], None]
LEAD_S = 0.005  # the schedule starts a moment after set-up, so the first send is not already late


class _Runner:
    """Sends requests to a target and keeps, for each, its wave and scheduled and actual send times."""

    def __init__(self, target: Target, gen: GenerationParams, *, total: int | None, progress: Progress | None,
                 desc: str, on_request_done: DoneCallback | None) -> None:
        self.target, self.on_request_done = target, on_request_done
        self.gen = {"max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature, "seed": gen.seed}
        self.rows: list[tuple[Request, int, float, float, str]] = []
        self.progress = progress
        if progress is not None:
            progress.start(total, desc)

    def send(self, prompt: str, wave: int, scheduled_at: float, max_new_tokens: int | None = None) -> Request:
        sent_at = time.perf_counter()
        gen = self.gen if max_new_tokens is None else {**self.gen, "max_new_tokens": max_new_tokens}
        req = self.target.submit(prompt, **gen)
        self.rows.append((req, wave, scheduled_at, sent_at, prompt))
        if self.progress is not None:
            self.progress.sent(req, wave)
        req.future.add_done_callback(lambda _f: self._finished(req))
        return req

    def _finished(self, req: Request) -> None:
        if self.progress is not None:
            self.progress.done(req)
        if self.on_request_done is not None:
            self.on_request_done(req)

    def unfinished(self) -> list[Request]:
        return [r for r, *_ in self.rows if not r.done]

    def cancel_unfinished(self) -> None:
        for req in self.unfinished():
            self.target.cancel(req)

    async def settle(self) -> None:
        """Wait until every request sent is terminal (the target guarantees that they all get there)."""
        pending = [r.future for r in self.unfinished()]
        if pending:
            await asyncio.wait(pending)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def frame(self, start: float) -> pd.DataFrame:
        rows = [{**req.as_row(), "wave": wave, "scheduled_at": sched, "sent_at": sent, "prompt": prompt,
                 "offset": sched - start} for req, wave, sched, sent, prompt in self.rows]
        return pd.DataFrame(rows, columns=REQUEST_COLUMNS).astype({"wave": int, "id": int})


async def _experiment(kind: str, target_like: RequestQueue | Target, params: dict[str, Any], *,
                      gen: GenerationParams, seed: int, total: int | None, progress: bool | Progress,
                      name: str | None,
                      on_request_done: DoneCallback | None, body: Callable[[_Runner, float], Any]) -> StressRun:
    """Shared frame of every experiment: run `body`, settle every request, build the StressRun.

    Cancelling the experiment (an interrupted notebook cell) cancels its queued requests, so the
    queue is left usable, and re-raises.
    """
    target = as_target(target_like)
    runner = _Runner(target, gen, total=total, progress=as_progress(progress), desc=kind,
                     on_request_done=on_request_done)
    start = time.perf_counter() + LEAD_S
    wall = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        await body(runner, start)
        await runner.settle()
    except BaseException:
        runner.cancel_unfinished()
        raise
    finally:
        runner.close()
    requests = runner.frame(start)
    if requests.empty:
        raise ValueError("the experiment sent no requests (is the duration shorter than the first gap?)")
    end = float(requests.finished.max())
    timeline = target.timeline()
    if timeline is None:  # a remote target: the server's queue is not visible from here
        timeline = pd.DataFrame(columns=list(TIMELINE_COLUMNS))
    elif len(timeline):
        timeline = timeline[(timeline.t >= start - 1.0) & (timeline.t <= end + 1.0)].reset_index(drop=True)
    steps = target.steps()
    if steps is not None:
        steps = steps[(steps.t >= start - 1.0) & (steps.t <= end)].reset_index(drop=True)
    config = {"kind": kind, "name": name or kind, **params, "seed": seed, "max_new_tokens": gen.max_new_tokens,
              "temperature": gen.temperature, "target": target.info(), "started_at_utc": wall,
              "clock": "time.perf_counter", "start": start}
    return StressRun(kind=kind, config=config, requests=requests, timeline=timeline, steps=steps)


def _gen(max_new_tokens: int, temperature: float) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature)


def _seconds(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    return None if value is None and allow_none else non_negative(name, value, unit="seconds")


async def _send_on_schedule(runner: _Runner, start: float, offsets: Sequence[float], prompts: list[str],
                            wave: int = 1, caps: Sequence[int | None] | None = None) -> None:
    """Open loop: send each prompt at start + offset (with its own max_new_tokens, if `caps`), never waiting."""
    for i, (offset, prompt, cap) in enumerate(zip(offsets, prompts, caps or [None] * len(prompts))):
        due = start + float(offset)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 64 == 63:
            await asyncio.sleep(0)  # behind schedule: still let the loop breathe now and then
        runner.send(prompt, wave, due, cap)


# -- experiments ------------------------------------------------------------------------------------------
async def incremental(queue: RequestQueue | Target, waves: Sequence[int] = (10, 20, 30, 40), *,
                      max_new_tokens: int = 32, temperature: float = 0.0, prompts: Sequence[str] | None = None,
                      seed: int = 0, wave_timeout: float | None = None, pause_s: float = 0.0,
                      progress: bool | Progress = True, name: str | None = None,
                      on_wave_start: WaveCallback | None = None,
                      on_request_done: DoneCallback | None = None) -> StressRun:
    """Waves of N requests sent at once; each wave waits for all of its requests (or `wave_timeout`,
    after which its still-queued requests are cancelled) before the next starts, `pause_s` later."""
    if isinstance(waves, (str, bytes)) or not isinstance(waves, Sequence) or not waves:
        raise ValueError(f"waves must be a non-empty list of positive ints, got {waves!r}")
    sizes = [positive_int("each wave size", w) for w in waves]
    timeout = _seconds("wave_timeout", wave_timeout, allow_none=True)
    if timeout == 0:
        raise ValueError("wave_timeout must be > 0 seconds or None")
    pause = _seconds("pause_s", pause_s)
    gen = _gen(max_new_tokens, temperature)
    all_prompts = choose(sum(sizes), prompts, np.random.default_rng(seed))

    async def body(runner: _Runner, start: float) -> None:
        cursor = itertools.count()
        for number, size in enumerate(sizes, 1):
            if on_wave_start is not None:
                on_wave_start(number, size)
            now = time.perf_counter()
            wave = [runner.send(all_prompts[next(cursor)], number, now) for _ in range(size)]
            pending = [r.future for r in wave if not r.done]
            if pending:
                await asyncio.wait(pending, timeout=timeout)
                for req in wave:
                    if not req.done:
                        runner.target.cancel(req)  # queued ones end now; a processing one finishes
            if pause and number < len(sizes):
                await asyncio.sleep(pause)

    return await _experiment("incremental", queue, {"waves": sizes, "wave_timeout": timeout, "pause_s": pause},
                             gen=gen, seed=seed, total=sum(sizes), progress=progress, name=name,
                             on_request_done=on_request_done, body=body)


async def rapid_fire(queue: RequestQueue | Target, n: int = 100, *, burst_s: float = 0.0,
                     max_new_tokens: int | Sequence[int] = 32, temperature: float = 0.0,
                     prompts: Sequence[str] | None = None, seed: int = 0, progress: bool | Progress = True,
                     name: str | None = None, on_request_done: DoneCallback | None = None) -> StressRun:
    """n requests as fast as possible (burst_s=0) or spread evenly over burst_s seconds.

    `max_new_tokens` may be a list, each request drawing its cap from it (seeded), as in open-loop runs.
    """
    n = positive_int("n", n)
    burst = non_negative("burst_s", burst_s, unit="seconds")
    caps = choose_caps(max_new_tokens, n, seed)
    gen = _gen(max(caps), temperature)
    chosen = choose(n, prompts, np.random.default_rng(seed))
    offsets = (np.arange(n) * (burst / n)).tolist()
    per_request = None if isinstance(max_new_tokens, int) else caps

    async def body(runner: _Runner, start: float) -> None:
        await _send_on_schedule(runner, start, offsets, chosen, caps=per_request)

    params = {"n": n, "burst_s": burst,
              "max_new_tokens_choices": None if isinstance(max_new_tokens, int) else list(max_new_tokens)}
    return await _experiment("rapid_fire", queue, params, gen=gen, seed=seed, total=n,
                             progress=progress, name=name, on_request_done=on_request_done, body=body)


class OpenLoopOptions(TypedDict, total=False):
    """What every open-loop experiment takes besides its arrival schedule (defaults in `_open_loop`)."""

    seed: int
    max_new_tokens: int | Sequence[int]
    temperature: float
    prompts: Sequence[str] | None
    progress: bool | Progress
    name: str | None
    on_request_done: DoneCallback | None


async def _open_loop(kind: str, queue: RequestQueue | Target, rate: float, duration: float | None, n: int | None,
                     *, burstiness: float = 1.0, max_new_tokens: int | Sequence[int] = 32, temperature: float = 0.0,
                     prompts: Sequence[str] | None = None, seed: int = 0, progress: bool | Progress = True,
                     name: str | None = None, on_request_done: DoneCallback | None = None) -> StressRun:
    offsets = arrivals.schedule(kind, rate, duration=duration, n=n, seed=seed, burstiness=burstiness)
    caps = choose_caps(max_new_tokens, len(offsets), seed)
    gen = _gen(max(caps), temperature)
    # A separate stream for prompts, so changing the rate does not change which prompts are sent.
    chosen = choose(len(offsets), prompts, np.random.default_rng([seed, 1]))

    async def body(runner: _Runner, start: float) -> None:
        await _send_on_schedule(runner, start, offsets.tolist(), chosen, caps=caps)

    params = {"rate": rate, "duration": duration, "n": n, "burstiness": burstiness if kind == "gamma" else None,
              "max_new_tokens_choices": None if isinstance(max_new_tokens, int) else list(max_new_tokens)}
    return await _experiment(kind, queue, params, gen=gen, seed=seed, total=len(offsets), progress=progress,
                             name=name, on_request_done=on_request_done, body=body)


async def poisson(queue: RequestQueue | Target, rate: float, duration: float | None = None, n: int | None = None,
                  **options: Unpack[OpenLoopOptions]) -> StressRun:
    """Open loop, Poisson arrivals at `rate` per second (exponential gaps), for `duration` s or `n` requests.

    Options (all experiments): seed=0, max_new_tokens=32, temperature=0.0, prompts=None (the built-in
    set), progress=True, name=None, on_request_done=None. For open-loop runs `max_new_tokens` may also
    be a list, each request drawing its cap from it (seeded): `[16, 16, 16, 128]` mixes short and long.
    """
    return await _open_loop("poisson", queue, rate, duration, n, **options)


async def constant(queue: RequestQueue | Target, rate: float, duration: float | None = None, n: int | None = None,
                   **options: Unpack[OpenLoopOptions]) -> StressRun:
    """Open loop, one request every 1/rate seconds (options as for `poisson`)."""
    return await _open_loop("constant", queue, rate, duration, n, **options)


async def gamma(queue: RequestQueue | Target, rate: float, duration: float | None = None, n: int | None = None, *,
                burstiness: float = 1.0, **options: Unpack[OpenLoopOptions]) -> StressRun:
    """Open loop, Gamma gaps as in vLLM's serving benchmark: burstiness 1 is Poisson, larger is steadier."""
    return await _open_loop("gamma", queue, rate, duration, n, burstiness=burstiness, **options)


async def concurrency(queue: RequestQueue | Target, users: int, n: int, *, max_new_tokens: int = 32,
                      temperature: float = 0.0, prompts: Sequence[str] | None = None, seed: int = 0,
                      progress: bool | Progress = True, name: str | None = None,
                      on_request_done: DoneCallback | None = None) -> StressRun:
    """Closed loop: `users` simulated users, each sending its next request when its last one ends, n in all."""
    users = positive_int("users", users)
    n = positive_int("n", n)
    gen = _gen(max_new_tokens, temperature)
    chosen = choose(n, prompts, np.random.default_rng(seed))
    tickets = iter(range(n))

    async def user(runner: _Runner) -> None:
        for i in tickets:  # shared iterator: users take the next request number in turn
            now = time.perf_counter()
            req = runner.send(chosen[i], 1, now)
            if not req.done:
                await asyncio.wait([req.future])
            else:
                await asyncio.sleep(0)

    async def body(runner: _Runner, start: float) -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await asyncio.gather(*(user(runner) for _ in range(users)))

    return await _experiment("concurrency", queue, {"users": users, "n": n}, gen=gen, seed=seed, total=n,
                             progress=progress, name=name, on_request_done=on_request_done, body=body)


async def each_scheduler(model: LanguageModel, schedulers: dict[str, Callable[[], Scheduler]],
                         experiment: Callable[..., Awaitable[StressRun]] | None = None, *,
                         max_queue_size: int = 100_000, **kwargs: Any) -> dict[str, StressRun]:
    """The same experiment (default `poisson`; same seed, so the same arrivals and prompts) through a fresh
    queue on `model` per scheduler, one after another. Each run is named after its scheduler and
    carries the queue's model steps (`run.steps`)."""
    experiment = experiment or poisson
    runs: dict[str, StressRun] = {}
    for name, make in schedulers.items():
        async with RequestQueue(model, scheduler=make(), max_queue_size=max_queue_size) as q:
            runs[name] = await experiment(q, name=name, **kwargs)
    return runs
