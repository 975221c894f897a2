"""The scheduling seam: the worker asks a `Scheduler` which waiting requests to run next.

The sequential scheduler takes one: that is why "Processing" never exceeds 1. Batching schedulers
come later through this same seam, without touching the queue.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

from .request import Request

# Waiting requests by id, oldest first. An OrderedDict gives O(1) pop-oldest and O(1) removal
# of a cancelled request from the middle.
WaitingLine = OrderedDict[int, Request]


class Scheduler(ABC):
    """Chooses what runs next. `select` is called only when `waiting` is non-empty."""

    @abstractmethod
    def select(self, waiting: WaitingLine) -> list[Request]:
        """Remove the requests to run next from `waiting` and return them (at least one)."""


class SequentialScheduler(Scheduler):
    """First come, first served, one at a time."""

    def select(self, waiting: WaitingLine) -> list[Request]:
        _, oldest = waiting.popitem(last=False)
        return [oldest]

    def __repr__(self) -> str:
        return "SequentialScheduler()"
