"""What a load generator sends to: the `Target` seam.

A target takes a prompt and hands back a `Request` at once; the request reaches a terminal state
later, with its timestamps filled in. `QueueTarget` wraps an in-process `RequestQueue`; an HTTP
target for OpenAI-compatible servers fits the same seam (it fills `Request`s from the client side).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pandas as pd

from queuelab.engine.request_queue import RequestQueue
from queuelab.request import Request


class Target(ABC):
    """Where stress experiments send requests."""

    name: str = "target"

    @abstractmethod
    def submit(self, prompt: str, **gen_kwargs: Any) -> Request:
        """Send one request; return at once. Refusals come back as REJECTED requests, not exceptions."""

    @abstractmethod
    def cancel(self, request: Request) -> bool:
        """Cancel a request that has not started; False if it is already running or done."""

    def info(self) -> dict[str, Any]:
        """What is being measured (model, server), recorded in a run's config."""
        return {"name": self.name}

    def timeline(self) -> pd.DataFrame | None:
        """The server's own timeline, if it has one."""
        return None

    def steps(self) -> pd.DataFrame | None:
        """The server's model steps (batch size, tokens, duration), if it shows them."""
        return None


class QueueTarget(Target):
    """An in-process `RequestQueue`."""

    def __init__(self, queue: RequestQueue) -> None:
        self.queue = queue
        self.name = f"queue:{getattr(queue.model, 'name', 'model')}"

    def submit(self, prompt: str, **gen_kwargs: Any) -> Request:
        return self.queue.submit(prompt, **gen_kwargs)

    def cancel(self, request: Request) -> bool:
        return self.queue.cancel(request)

    def info(self) -> dict[str, Any]:
        q = self.queue
        return {"name": self.name, "model": q.model.info(), "max_queue_size": q.max_queue_size,
                "request_timeout": q.request_timeout, "scheduler": repr(q.scheduler)}

    def timeline(self) -> pd.DataFrame:
        return self.queue.timeline()

    def steps(self) -> pd.DataFrame:
        return self.queue.steps()


def as_target(obj: RequestQueue | Target) -> Target:
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, RequestQueue):
        return QueueTarget(obj)
    raise ValueError(f"expected a RequestQueue or a stress Target, got {type(obj).__name__}")
