"""A thin sync edge for scripts: the core is async, notebooks use top-level `await`."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from queuelab.errors import QueueStateError

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (a script). Refuses inside a running loop.

    In Jupyter the kernel's loop is already running: write `await coro` in the cell instead.
    (nest-asyncio is deliberately not used: see DESIGN.md.)
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()  # never awaited; close it so Python does not warn about that too
    raise QueueStateError("ql.run() cannot be used inside a running event loop (Jupyter, async code): "
                       "use `await ...` instead")
