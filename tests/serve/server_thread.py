"""A real uvicorn server on a free loopback port, in a thread with its own event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

import queuelab as ql
from queuelab.serve.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """`with ServerThread(lambda: ql.RequestQueue(model)) as srv: srv.url ...` — the queue is built
    inside the server's loop; on exit the server shuts down (and the app stops the queue)."""

    def __init__(self, make_queue: Callable[[], ql.RequestQueue], *, drain: bool = True) -> None:
        self.make_queue, self.drain = make_queue, drain
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queue: ql.RequestQueue | None = None
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.queue = self.make_queue()
            app = create_app(self.queue, drain_on_shutdown=self.drain)
            config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="on")
            self.server = uvicorn.Server(config)
            await self.server.serve()

        asyncio.run(main())

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (self.server and self.server.started):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.should_exit = True
        self.thread.join(30)
