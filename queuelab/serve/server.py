"""An OpenAI-compatible HTTP server in front of a `RequestQueue` (FastAPI + uvicorn, the `server` extra).

Every completion goes through the queue, so the server behaves as the queue does in process: with its
scheduler (FIFO one at a time by default, or batched), latency that includes the wait.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

try:  # the whole server extra, checked here so that `queuelab serve` without it says what to install
    import prometheus_client  # noqa: F401 - used by queuelab.serve.prometheus and .routes
    import sse_starlette  # noqa: F401 - used by queuelab.serve.completions
    import uvicorn
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - the server extra is missing
    raise ImportError("the server needs the server extra: pip install 'queuelab[server]' (make lab does it)") from e

from queuelab.engine.request_queue import RequestQueue
from queuelab.errors import APIError
from queuelab.serve import routes
from queuelab.serve.completions import BODY_TIMEOUT_S, MAX_BODY_BYTES
from queuelab.serve.prometheus import metrics_registry
from queuelab.serve.state import AppState, app_state
from queuelab.serve.uvicorn_server import GracefulServer, local_hosts


def create_app(queue: RequestQueue, *, manage_queue: bool = True, drain_on_shutdown: bool = True,
               max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S,
               model_names: list[str] | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The ASGI app. With manage_queue, the app starts the queue at startup and stops it at shutdown.

    `model_names`: the names a request's `model` may give (default: the model's own name); any other
    is a 404, as vLLM answers. `allowed_hosts`: the Host headers served (default: any); `serve` sets
    the names of the address it binds, which stops DNS-rebinding pages from reading the server.
    """
    model_name = str(getattr(queue.model, "name", "model"))
    refused: Counter[int] = Counter()
    app = FastAPI(title="queuelab", lifespan=lifespan, exception_handlers={
        APIError: routes.api_error,  # every refusal, in OpenAI's error shape
        StarletteHTTPException: routes.http_error,  # the router's own 404 and 405, in the same shape
        ClientDisconnect: routes.client_gone})  # the client left while sending its body
    app.state.queuelab = AppState(
        queue=queue, model_name=model_name, names=tuple(model_names or [model_name]), manage_queue=manage_queue,
        drain_on_shutdown=drain_on_shutdown, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
        refused=refused, registry=metrics_registry(queue, refused))
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    read = ["GET", "HEAD"]  # HEAD: clients probe endpoints with it
    app.add_api_route("/v1/models", routes.models, methods=read)
    app.add_api_route("/v1/models/{name:path}", routes.model, methods=read)
    app.add_api_route("/health", routes.health, methods=read)
    app.add_api_route("/stats", routes.stats, methods=read)
    app.add_api_route("/metrics", routes.metrics, methods=read)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's life: with manage_queue, the queue starts with it and stops (draining or not) after it."""
    state = app_state(app)
    state.loop = asyncio.get_running_loop()
    if state.manage_queue:
        await state.queue.start()
    yield
    state.stopping = True
    if state.manage_queue:
        await state.queue.stop(drain=state.drain_on_shutdown)


def serve(queue: RequestQueue, *, host: str = "127.0.0.1", port: int = 8000, drain: bool = True,
          log_level: str = "warning", model_names: list[str] | None = None,
          allowed_hosts: list[str] | None | Literal["auto"] = "auto") -> None:
    """Run the server until SIGINT/SIGTERM. Binds to loopback unless another host is asked for.

    `allowed_hosts="auto"` answers only Host headers naming the bound address (see `local_hosts`);
    None answers any.
    """
    hosts = local_hosts(host, port) if allowed_hosts == "auto" else allowed_hosts
    app = create_app(queue, drain_on_shutdown=drain, model_names=model_names, allowed_hosts=hosts)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=5)
    GracefulServer(config, app).run()


__all__ = ["create_app", "serve"]
