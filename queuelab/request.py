"""A request's record: its status, its timestamps, and what came of it.

Statuses move one way only (see `TRANSITIONS`), and `Request.advance` is the one place that moves them.
All timestamps come from one monotonic clock, `time.perf_counter()`, so any two can be subtracted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from queuelab.errors import RequestCancelled, RequestFailed, RequestRejected
from queuelab.generation import Completion, GenerationParams
from queuelab.sequence import Sequence, TokenCallback


class RequestStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.REJECTED})

# None is "not yet admitted": a request is queued or rejected at the door. A remote target (HTTP)
# learns the server's answer later, so its requests may also fail or be cancelled before admission.
TRANSITIONS: dict[RequestStatus | None, frozenset[RequestStatus]] = {
    None: frozenset({RequestStatus.QUEUED, RequestStatus.REJECTED, RequestStatus.FAILED, RequestStatus.CANCELLED}),
    RequestStatus.QUEUED: frozenset({RequestStatus.PROCESSING, RequestStatus.CANCELLED}),
    RequestStatus.PROCESSING: frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED}),
}


_ERRORS = {
    RequestStatus.FAILED: RequestFailed,
    RequestStatus.CANCELLED: RequestCancelled,
    RequestStatus.REJECTED: RequestRejected,
}


@dataclass(eq=False, slots=True)
class Request:
    """One request through the queue. Await it for its `Completion`."""

    id: int
    prompt: Any  # whatever the caller sent: a rejected request keeps its bad input for the record
    params: GenerationParams | None
    arrived: float
    status: RequestStatus | None = None
    prompt_tokens: int | None = None
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    completion: Completion | None = None
    error: str | None = None
    tokens_streamed: int = 0  # pieces seen so far while PROCESSING, for live displays
    refusal: str | None = None  # why REJECTED, as a code: invalid_request, queue_full, unavailable
    sequence: Sequence | None = field(default=None, repr=False)  # its state inside the model, once admitted
    # Made on the event loop when first awaited, so a record can be built and read without one.
    _done: asyncio.Future[None] | None = field(default=None, repr=False)
    _pieces: asyncio.Queue[str | None] | None = field(default=None, repr=False)

    # -- the one place a status changes ------------------------------------------------------
    def advance(self, status: RequestStatus, now: float, *, completion: Completion | None = None,
                error: str | None = None) -> None:
        """Move to `status` at time `now`, stamping the matching timestamp; refuse illegal moves."""
        if status not in TRANSITIONS.get(self.status, frozenset()):
            raise RuntimeError(f"request {self.id}: illegal transition {self.status} -> {status}")
        self.status = status
        if status is RequestStatus.PROCESSING:
            self.started = now
        elif status in TERMINAL:
            self.finished = now
            self.completion, self.error = completion, error
            if self._done is not None:
                self._done.set_result(None)
            if self._pieces is not None:
                self._pieces.put_nowait(None)  # after every piece already handed over: end of stream

    def enable_streaming(self) -> None:
        """Keep the text pieces as they are generated, for `stream()`. Call before it is processed."""
        if self._pieces is None:
            self._pieces = asyncio.Queue()

    def token_callback(self, loop: asyncio.AbstractEventLoop) -> TokenCallback:
        """What the model calls with each piece of text, in its own thread.

        `tokens_streamed` and `first_token` are plain values that only that thread writes
        (first_token once: the clock reading where the token appeared) and the loop only reads, so
        the loop is woken per token only for a caller that asked for the text as a stream.
        """
        streaming = self._pieces is not None

        def on_token(piece: str) -> None:
            self.tokens_streamed += 1
            if self.first_token is None and self.sequence is not None:
                self.first_token = self.sequence.first_token_at  # set by Sequence.append before any piece
            if streaming:
                loop.call_soon_threadsafe(self.push_piece, piece)

        return on_token

    def push_piece(self, piece: str) -> None:
        """Hand over one piece of generated text (on the event loop's thread)."""
        if self._pieces is not None and not self.done:
            self._pieces.put_nowait(piece)

    async def stream(self) -> AsyncIterator[str]:
        """Yield the answer's text pieces as they are generated; raise like `await` if it fails."""
        if self._pieces is None:
            raise RuntimeError("this request was not submitted with stream=True")
        while (piece := await self._pieces.get()) is not None:
            yield piece
        self.result()  # raises if the request did not complete

    # -- derived timings (None until both ends exist) ------------------------------------------
    @property
    def wait(self) -> float | None:
        """Time spent queued: started − arrived."""
        return _diff(self.started, self.arrived)

    @property
    def service(self) -> float | None:
        """Time being served: finished − started."""
        return _diff(self.finished, self.started)

    @property
    def ttft(self) -> float | None:
        """Time to first token as the caller sees it, queueing included: first_token − arrived."""
        return _diff(self.first_token, self.arrived)

    @property
    def e2e(self) -> float | None:
        """End-to-end latency, queueing included: finished − arrived."""
        return _diff(self.finished, self.arrived)

    @property
    def future(self) -> asyncio.Future[None]:
        """Resolves (to None) when the request reaches a terminal state; for asyncio.wait and callbacks.
        Needs the running event loop."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            if self.done:
                self._done.set_result(None)
        return self._done

    @property
    def done(self) -> bool:
        return self.status is not None and self.status.terminal

    def result(self) -> Completion:
        """The completion of a finished request, or the error it ended with (raised)."""
        if not self.done:
            raise asyncio.InvalidStateError(f"request {self.id} is {self.status}")
        if self.status is RequestStatus.COMPLETED:
            assert self.completion is not None
            return self.completion
        assert self.status is not None
        raise _ERRORS[self.status](self)

    def __await__(self) -> Generator[Any, None, Completion]:
        # shield: a caller that stops waiting (cancelled task) does not cancel the request itself.
        yield from asyncio.shield(self.future).__await__()
        return self.result()

    def as_row(self) -> dict[str, Any]:
        """One flat row for a DataFrame."""
        c = self.completion
        return {
            "id": self.id, "status": self.status.value if self.status else None,
            "arrived": self.arrived, "started": self.started, "first_token": self.first_token,
            "finished": self.finished, "wait": self.wait, "service": self.service, "ttft": self.ttft,
            "e2e": self.e2e, "prompt_tokens": c.prompt_tokens if c else self.prompt_tokens,
            "completion_tokens": c.completion_tokens if c else 0, "finish_reason": c.finish_reason if c else None,
            "error": self.error,
        }


def _diff(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start
