"""What the server's routes, lifespan and shutdown share: one `AppState`, kept on `app.state.queuelab`."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from queuelab.engine.request_queue import RequestQueue

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


@dataclass(eq=False)
class AppState:
    """The queue and the app's settings, fixed when the app is made, and the few flags that follow its life.

    Only `loop` (set when the lifespan starts), `stopping` and the contents of `refused` and `abort`
    change afterwards.
    """

    queue: RequestQueue
    #: The model's own name, which every response carries.
    model_name: str
    #: The names a request's `model` may give; any other is a 404.
    names: tuple[str, ...]
    #: Whether the app starts the queue at startup and stops it at shutdown.
    manage_queue: bool
    #: At shutdown, finish what waits (True) or cancel it (False).
    drain_on_shutdown: bool
    max_body_bytes: int
    body_timeout_s: float
    #: Requests answered with an error before they reached the queue (bad JSON, unknown field, ...),
    #: by status: the queue's own counts cannot see them.
    refused: Counter[int]
    #: What /metrics exposes; it reads the queue (and `refused`) at scrape time.
    registry: CollectorRegistry
    #: Set on a second shutdown signal: requests still being computed are answered 503 at once.
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    #: The server's event loop, once the lifespan has started (a signal before then is uvicorn's to handle).
    loop: asyncio.AbstractEventLoop | None = None
    #: Set when shutdown begins: from then on new requests get 503.
    stopping: bool = False


def app_state(app: Any) -> AppState:
    """The `AppState` of an app made by `create_app` (routes pass `request.app`)."""
    state: AppState = app.state.queuelab
    return state
