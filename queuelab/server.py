"""An OpenAI-compatible HTTP server in front of a `RequestQueue` (FastAPI + uvicorn, the `server` extra).

Every completion goes through the queue, so the server behaves exactly as the notebooks show:
with its scheduler (FIFO one at a time by default, or batched), latency that includes the wait.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

try:
    import uvicorn
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
        generate_latest,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
except ImportError as e:  # pragma: no cover - the server extra is missing
    raise ImportError("the server needs the server extra: pip install 'queuelab[server]' (make lab does it)") from e

from . import openai_api as api
from .request import Request, RequestError, RequestStatus
from .request_queue import RequestQueue

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_BODY_BYTES = 1_000_000


def create_app(queue: RequestQueue, *, manage_queue: bool = True, drain_on_shutdown: bool = True,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app. With manage_queue, the app starts the queue at startup and stops it at shutdown."""
    model_name = str(getattr(queue.model, "name", "model"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()
        if manage_queue:
            await queue.start()
        yield
        app.state.stopping = True
        if manage_queue:
            await queue.stop(drain=drain_on_shutdown)

    app = FastAPI(title="queuelab", lifespan=lifespan)
    app.state.queue, app.state.stopping, app.state.drain = queue, False, drain_on_shutdown

    @app.exception_handler(api.APIError)
    async def _api_error(_: HTTPRequest, e: api.APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def body_of(request: HTTPRequest) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise api.APIError(413, f"request body over {max_body_bytes} bytes", code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                raise api.APIError(413, f"request body over {max_body_bytes} bytes", code="body_too_large")
        try:
            return json.loads(raw)
        except ValueError:
            raise api.APIError(400, "request body is not valid JSON") from None

    def admit(prompt: Any, body: api._Body, *, stream: bool) -> Request:
        if app.state.stopping or not queue.running:
            raise api.APIError(503, "server is starting or stopping", type="server_error", code="unavailable")
        req = queue.submit(prompt, stream=stream, **body.gen_kwargs(DEFAULT_MAX_TOKENS))
        if req.status is RequestStatus.REJECTED:
            raise refusal_error(req)
        return req

    def refusal_error(req: Request) -> api.APIError:
        if req.refusal == "queue_full":
            return api.APIError(429, req.error or "queue full", type="rate_limit_error", code="queue_full",
                                headers={"Retry-After": str(retry_after())})
        if req.refusal == "invalid_request":
            return api.APIError(400, req.error or "invalid request", param=_param_of(req.error or ""))
        return api.APIError(503, req.error or "unavailable", type="server_error", code="unavailable")

    def retry_after() -> int:
        """Seconds until the queue has room, roughly: the waiting requests × mean service time."""
        return max(1, min(600, math.ceil(queue.queue_size * (queue.mean_service_s or 1.0))))

    def outcome_error(req: Request) -> api.APIError:
        if req.status is RequestStatus.FAILED:
            return api.APIError(500, req.error or "model failed", type="server_error", code="model_error")
        return api.APIError(503, f"request cancelled: {req.error}", type="server_error", code="cancelled")

    async def respond(request: HTTPRequest, req: Request, build: Any, chunk: Any) -> Response:
        body = request.state.body
        if body.stream:
            return StreamingResponse(sse(req, body, chunk), media_type="text/event-stream")
        if not await finished_or_gone(request, req):
            queue.cancel(req)  # the client went away while it waited: free its place in line
            return Response(status_code=499)
        if req.status is not RequestStatus.COMPLETED:
            raise outcome_error(req)
        c = req.completion
        assert c is not None
        return JSONResponse(build(f"q{req.id}", model_name, c.text, c.finish_reason,
                                  api.usage(c.prompt_tokens, c.completion_tokens)))

    async def sse(req: Request, body: api._Body, chunk: Any) -> AsyncIterator[str]:
        rid = f"q{req.id}"
        try:
            async for piece in req.stream():
                yield _event(chunk(rid, model_name, piece, None))
            c = req.completion
            assert c is not None
            yield _event(chunk(rid, model_name, "", c.finish_reason))
            if body.include_usage:
                yield _event({"id": rid, "object": "chunk", "model": model_name, "choices": [],
                              "usage": api.usage(c.prompt_tokens, c.completion_tokens)})
        except RequestError:
            yield _event(outcome_error(req).body())
        finally:
            if not req.done:
                queue.cancel(req)  # the client disconnected mid-stream
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Response:
        body = api.parse(api.CompletionBody, await body_of(request))
        request.state.body = body
        req = admit(body.prompt, body, stream=body.stream)
        return await respond(request, req, api.completion_response, api.completion_chunk)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest) -> Response:
        body = api.parse(api.ChatBody, await body_of(request))
        request.state.body = body
        req = admit(body.prompt(), body, stream=body.stream)
        return await respond(request, req, api.chat_response,
                             lambda rid, m, text, finish: api.chat_chunk(
                                 rid, m, {"content": text} if text else {}, finish))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "queuelab"}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        h = queue.health()
        ok = queue.running and not app.state.stopping
        return JSONResponse({"status": "ok" if ok else h.state, "model_loaded": True, "model": model_name,
                             "worker_alive": h.worker_alive}, status_code=200 if ok else 503)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return queue.stats().as_dict()

    registry = metrics_registry(queue)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _param_of(error: str) -> str | None:
    for needle, param in (("max_new_tokens", "max_tokens"), ("temperature", "temperature"), ("seed", "seed"),
                          ("prompt", "prompt")):
        if needle in error:
            return param
    return None


async def finished_or_gone(request: HTTPRequest, req: Request) -> bool:
    """Wait until the request is done (True) or the client has disconnected (False)."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait([req.future, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    return req.done


class QueueCollector:
    """A Prometheus collector that reads the queue's own numbers at scrape time.

    The queue already keeps its counts and cumulative latency histograms (the dashboard and `/stats`
    use them too), so this exports them rather than keeping a second set of metric objects that could
    drift from the first.
    """

    def __init__(self, queue: RequestQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        q, s = self.queue, self.queue.stats()
        yield GaugeMetricFamily("queuelab_queue_depth", "Requests waiting in the queue.", value=s.queue_size)
        yield GaugeMetricFamily("queuelab_processing", "Requests being processed: the running batch size (at most "
                                "1 when sequential).", value=s.processing)
        yield GaugeMetricFamily("queuelab_max_batch", "The scheduler's largest batch.", value=q.scheduler.max_batch)
        yield CounterMetricFamily("queuelab_model_steps", "Model steps run (prefill or decode).", value=q.step_count)
        requests = CounterMetricFamily("queuelab_requests", "Requests by final state (submitted counts every request).",
                                       labels=["state"])
        for state in ("submitted", "completed", "failed", "cancelled", "rejected"):
            requests.add_metric([state], getattr(s, state))
        yield requests
        for kind, h in q.histograms().items():
            buckets = [("+Inf" if math.isinf(b) else str(b), n) for b, n in h.cumulative()]
            yield HistogramMetricFamily(f"queuelab_{kind}_seconds", f"{kind} of completed requests, seconds.",
                                        buckets=buckets, sum_value=h.total)


def metrics_registry(queue: RequestQueue) -> CollectorRegistry:
    """The queue's metrics, plus the standard process and platform metrics every exporter has."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def prometheus(queue: RequestQueue) -> str:
    """The queue's state in Prometheus' text format (as `/metrics` serves it)."""
    return generate_latest(metrics_registry(queue)).decode()


class GracefulServer(uvicorn.Server):
    """On SIGINT/SIGTERM: refuse new requests (503), drain or cancel the queue, then exit.

    uvicorn alone would wait for open connections while the queue kept them waiting; here the
    queue decides first, so every request gets an answer (its completion, or a 503 "cancelled").
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app, self._stopping = app, False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._stopping:  # a second signal: stop now
            return super().handle_exit(sig, frame)
        self._stopping = True
        loop = getattr(self.app.state, "loop", None)
        if loop is None:
            return super().handle_exit(sig, frame)
        loop.call_soon_threadsafe(lambda: loop.create_task(self._shutdown()))

    async def _shutdown(self) -> None:
        self.app.state.stopping = True
        await self.app.state.queue.stop(drain=self.app.state.drain)
        self.should_exit = True


def serve(queue: RequestQueue, *, host: str = "127.0.0.1", port: int = 8000, drain: bool = True,
          log_level: str = "warning") -> None:
    """Run the server until SIGINT/SIGTERM. Binds to loopback unless another host is asked for."""
    app = create_app(queue, drain_on_shutdown=drain)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=5)
    GracefulServer(config, app).run()


__all__ = ["create_app", "serve", "prometheus", "metrics_registry", "QueueCollector", "GracefulServer"]
