"""The scheduling seam: before every model step the worker asks a `Scheduler` what to run.

A scheduler sees the waiting line and the running batch and returns a `Step` (which waiting requests
to prefill, which running ones to decode) or `Wait` (nothing to do yet). It owns policy only: the
queue owns admission and statuses, the runner owns the model's sequences and KV state.

Between decisions the runner repeats "decode everything running" without asking again, so a
scheduler is consulted only when something it could act on changed: a request finished, time
passed (`Wait.until`), or — for schedulers with `admits_while_running` — a request arrived.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from queuelab.checks import non_negative, positive_int
from queuelab.request import Request

# Waiting requests by id, oldest first. An OrderedDict gives O(1) pop-oldest and O(1) removal
# of a cancelled request from the middle.
WaitingLine = OrderedDict[int, Request]


@dataclass(frozen=True)
class Step:
    """Prefill these (taken from the waiting line), then decode one token for those (already running)."""

    prefill: list[Request] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


@dataclass(frozen=True)
class Wait:
    """Nothing to run now: ask again when a request arrives, or at `until` (perf_counter seconds)."""

    until: float | None = None


class Scheduler(ABC):
    """Chooses the next step. Subclasses implement `schedule`; keep them small and pure."""

    #: Whether an arrival can change the decision while a batch runs (continuous batching).
    #: False lets the runner decode without interruption until a request finishes.
    admits_while_running: bool = True
    #: The largest batch this scheduler forms (for displays and the runner's sanity check).
    max_batch: int = 1

    @abstractmethod
    def schedule(self, waiting: WaitingLine, running: Sequence[Request], now: float) -> Step | Wait:
        """Pop the requests to prefill from `waiting`; return the step, or Wait."""




class SequentialScheduler(Scheduler):
    """First come, first served, one at a time: the baseline. "Processing" never exceeds 1."""

    admits_while_running = False

    def schedule(self, waiting: WaitingLine, running: Sequence[Request], now: float) -> Step | Wait:
        if running:
            return Step(decode=list(running))
        return Step(prefill=self.select(waiting)) if waiting else Wait()

    def select(self, waiting: WaitingLine) -> list[Request]:
        """The next request to serve: the oldest."""
        _, oldest = waiting.popitem(last=False)
        return [oldest]

    def __repr__(self) -> str:
        return "SequentialScheduler()"


class StaticBatchScheduler(Scheduler):
    """Collect up to `max_batch` requests (waiting at most `max_wait_s` after the oldest arrived for
    the batch to fill), run the batch until every request in it has finished, then the next.

    Nothing joins a running batch: a slot freed by a short answer stays empty until the longest
    finishes. (Each request still completes when its own answer ends.)
    """

    admits_while_running = False

    def __init__(self, max_batch: int = 8, max_wait_s: float = 0.05) -> None:
        self.max_batch = positive_int("max_batch", max_batch)
        self.max_wait_s = non_negative("max_wait_s", max_wait_s, unit="seconds")

    def schedule(self, waiting: WaitingLine, running: Sequence[Request], now: float) -> Step | Wait:
        if running:
            return Step(decode=list(running))
        if not waiting:
            return Wait()
        oldest = next(iter(waiting.values()))
        due = oldest.arrived + self.max_wait_s
        if len(waiting) < self.max_batch and now < due:
            return Wait(until=due)
        return Step(prefill=self.take(waiting))

    def take(self, waiting: WaitingLine) -> list[Request]:
        """The batch to start: the oldest `max_batch`, in arrival order."""
        return [waiting.popitem(last=False)[1] for _ in range(min(self.max_batch, len(waiting)))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_batch={self.max_batch}, max_wait_s={self.max_wait_s})"


class LengthGroupedScheduler(StaticBatchScheduler):
    """Static batches of similar prompt lengths, so rows carry less left padding in the KV cache.

    The oldest waiting request always goes into the next batch (nobody starves); the other seats go
    to the requests among the next `window` waiting whose prompt length is closest to it. The cost
    is fairness: a request of unusual length is passed over while others of common length overtake it.
    """

    def __init__(self, max_batch: int = 8, max_wait_s: float = 0.05, window: int = 64) -> None:
        super().__init__(max_batch, max_wait_s)
        self.window = positive_int("window", window)

    def take(self, waiting: WaitingLine) -> list[Request]:
        reqs = list(waiting.values())[: self.window]
        oldest, rest = reqs[0], reqs[1:]
        n0 = oldest.prompt_tokens or 0
        rest.sort(key=lambda r: abs((r.prompt_tokens or 0) - n0))  # stable: ties keep arrival order
        chosen = sorted([oldest, *rest[: self.max_batch - 1]], key=lambda r: r.arrived)
        for r in chosen:
            del waiting[r.id]
        return chosen

    def __repr__(self) -> str:
        return f"LengthGroupedScheduler(max_batch={self.max_batch}, max_wait_s={self.max_wait_s}, window={self.window})"


class ContinuousBatchScheduler(Scheduler):
    """Iteration-level batching: between decode steps, finished requests leave and waiting ones join,
    in arrival order, while the batch has fewer than `max_batch` requests and their total tokens
    (prompt + max_new_tokens, what their KV cache may grow to) fit `max_batch_tokens`.

    A request larger than the token budget on its own still runs, alone, rather than never.
    """

    def __init__(self, max_batch: int = 16, max_batch_tokens: int | None = None) -> None:
        self.max_batch = positive_int("max_batch", max_batch)
        if max_batch_tokens is not None:
            positive_int("max_batch_tokens", max_batch_tokens)
        self.max_batch_tokens = max_batch_tokens

    def schedule(self, waiting: WaitingLine, running: Sequence[Request], now: float) -> Step | Wait:
        admit = self.admit(waiting, running)
        return Step(prefill=admit, decode=list(running)) if admit or running else Wait()

    def admit(self, waiting: WaitingLine, running: Sequence[Request]) -> list[Request]:
        admit: list[Request] = []
        tokens = sum(_tokens(r) for r in running)
        while waiting and len(running) + len(admit) < self.max_batch:
            oldest = next(iter(waiting.values()))
            budget = self.max_batch_tokens
            if budget is not None and tokens + _tokens(oldest) > budget and (running or admit):
                break  # in arrival order: nobody overtakes the oldest
            tokens += _tokens(waiting.popitem(last=False)[1])
            admit.append(oldest)
        return admit

    def __repr__(self) -> str:
        return f"ContinuousBatchScheduler(max_batch={self.max_batch}, max_batch_tokens={self.max_batch_tokens})"


class AdaptiveBatchScheduler(ContinuousBatchScheduler):
    """Continuous batching whose batch limit follows the load.

    The limit starts at `min_batch`. Whenever there is more work than seats (running + waiting >
    limit), it doubles (up to `max_batch`): under load, throughput wins. When nobody is waiting, it
    halves (down to `min_batch`, and never below what is running): at low load, small batches keep
    each step — and so every token of every running request — fast.

    (It counts running + waiting rather than "waiting while every seat is full": a scheduler is
    consulted when a seat has just come free, so with a backlog but no new arrivals the batch would
    never look full, and the limit would never grow.)
    """

    def __init__(self, min_batch: int = 1, max_batch: int = 32, max_batch_tokens: int | None = None) -> None:
        super().__init__(max_batch, max_batch_tokens)
        self.min_batch = positive_int("min_batch", min_batch)
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch ({min_batch}) must be <= max_batch ({max_batch})")
        self.limit = self.min_batch

    def schedule(self, waiting: WaitingLine, running: Sequence[Request], now: float) -> Step | Wait:
        if waiting and len(running) + len(waiting) > self.limit:
            self.limit = min(self.max_batch, self.limit * 2)
        elif not waiting:
            self.limit = max(self.min_batch, self.limit // 2, len(running))
        ceiling, self.max_batch = self.max_batch, self.limit
        try:
            admit = self.admit(waiting, running)
        finally:
            self.max_batch = ceiling
        return Step(prefill=admit, decode=list(running)) if admit or running else Wait()

    def __repr__(self) -> str:
        return (f"AdaptiveBatchScheduler(min_batch={self.min_batch}, max_batch={self.max_batch}, "
                f"max_batch_tokens={self.max_batch_tokens})")


def _tokens(r: Request) -> int:
    return (r.prompt_tokens or 0) + (r.params.max_new_tokens if r.params else 0)


#: What the CLI's --scheduler accepts: a plain dict from names to classes.
SCHEDULERS: dict[str, type[Scheduler]] = {
    "sequential": SequentialScheduler,
    "static": StaticBatchScheduler,
    "length-grouped": LengthGroupedScheduler,
    "continuous": ContinuousBatchScheduler,
    "adaptive": AdaptiveBatchScheduler,
}


def make_scheduler(name: str, max_batch: int | None = None) -> Scheduler:
    """A scheduler by CLI name, with `max_batch` where it takes one."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose from {', '.join(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    if cls is SequentialScheduler:
        if max_batch not in (None, 1):
            raise ValueError("the sequential scheduler runs one request at a time: max_batch must be 1")
        return cls()
    make: Any = cls  # every batching scheduler takes max_batch; the base class does not say so
    return make(max_batch=max_batch) if max_batch is not None else make()
