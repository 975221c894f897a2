"""The package's exceptions. Bad input is a plain `ValueError` naming the problem; everything else
queuelab raises on purpose derives from `QueuelabError`:

    QueuelabError
     ├── RequestError            `await request` on a request that did not complete (.request holds it)
     │    ├── RequestFailed      the model raised while serving it
     │    ├── RequestCancelled   cancelled while queued: caller, timeout, shutdown
     │    └── RequestRejected    refused at the door: invalid input, queue full, queue stopped
     ├── QueueStateError         the queue cannot do that now: not started, stopped, other event loop
     │                           (also a RuntimeError)
     └── SchedulerError          a scheduler broke the step contract (also a RuntimeError); the
                                 queue's worker stops, and says so in health()

A model fault (`SimulatedFailure`, a torch error) is not raised to callers: it fails the requests
of that step, and `await` on them raises `RequestFailed` with the reason.
"""

from __future__ import annotations


class QueuelabError(Exception):
    """Base of every exception queuelab raises on purpose (bad input aside: that is ValueError)."""


class QueueStateError(QueuelabError, RuntimeError):
    """The queue (or the sync edge) cannot do this in its current state."""


class SchedulerError(QueuelabError, RuntimeError):
    """A scheduler returned a step that breaks the contract (or waits forever with work waiting)."""
