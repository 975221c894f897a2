"""How the server runs under uvicorn: the queue decides first at shutdown, and loopback answers only its own names."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from fastapi import FastAPI

from queuelab.serve.state import app_state


class GracefulServer(uvicorn.Server):
    """On SIGINT/SIGTERM: refuse new requests (503), drain or cancel the queue, then exit.

    uvicorn alone would wait for open connections while the queue kept them waiting; here the
    queue decides first, so every request gets an answer (its completion, or a 503 "cancelled").
    A second signal stops now: what still waits is cancelled (503), and the server exits without
    waiting for the batch being computed (its clients' connections close unanswered).
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app_state, self._signalled = app_state(app), False
        self._cancelling: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = self.app_state.loop
        if loop is None:  # the app has not started: nothing of ours to stop yet
            return super().handle_exit(sig, frame)
        first, self._signalled = not self._signalled, True
        task = self._shutdown if first else self._stop_now
        loop.call_soon_threadsafe(lambda: loop.create_task(task()))

    async def _shutdown(self) -> None:
        self.app_state.stopping = True
        await self.app_state.queue.stop(drain=self.app_state.drain_on_shutdown)
        self.should_exit = True

    async def _stop_now(self) -> None:
        self.app_state.stopping = True
        self.app_state.abort.set()
        # stop(drain=False) cancels what waits at once (answered 503); it would then wait for the running
        # batch, which is what a second signal says not to do, so it is not awaited.
        self._cancelling = asyncio.ensure_future(self.app_state.queue.stop(drain=False))
        await asyncio.sleep(0.1)  # let those answers go out before the connections are dropped
        self.should_exit = self.force_exit = True


def local_hosts(host: str, port: int) -> list[str] | None:
    """The Host headers a server bound to `host` answers: its own names on loopback (so a web page
    that rebinds a DNS name to 127.0.0.1 cannot read it); None (any) on a public interface."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return ["127.0.0.1", "localhost", "[::1]", "::1"]
    if host in ("0.0.0.0", "::", ""):
        return None
    return [host]


__all__ = ["GracefulServer", "local_hosts"]
