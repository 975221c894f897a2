"""An OpenAI-compatible HTTP server in front of a `RequestQueue` (FastAPI + uvicorn, the `server` extra).

Every completion goes through the queue, so the server behaves exactly as the notebooks show:
with its scheduler (FIFO one at a time by default, or batched), latency that includes the wait.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

try:
    import uvicorn
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
        generate_latest,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from sse_starlette import EventSourceResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - the server extra is missing
    raise ImportError("the server needs the server extra: pip install 'queuelab[server]' (make lab does it)") from e

from queuelab.engine.request_queue import RequestQueue
from queuelab.errors import RequestError
from queuelab.generation import MAX_NEW_TOKENS_LIMIT
from queuelab.request import Request, RequestStatus
from queuelab.serve import openai_api as api

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_BODY_BYTES = 1_000_000
#: A client has this long to send its whole request body (a slow or stalled upload gets 408).
BODY_TIMEOUT_S = 30.0
#: The longest Retry-After we send: clients honour about this much (the openai SDK up to 120 s).
MAX_RETRY_AFTER_S = 60
#: Retry-After while the server starts or stops.
UNAVAILABLE_RETRY_AFTER_S = 5
#: Every response says how long its request waited in the queue and was served (seconds), so a
#: client can split its latency the way the server saw it; streams say it in the last chunk.
WAIT_HEADER, SERVICE_HEADER = "X-Queuelab-Wait-S", "X-Queuelab-Service-S"


def create_app(queue: RequestQueue, *, manage_queue: bool = True, drain_on_shutdown: bool = True,
               max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S,
               model_names: list[str] | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The ASGI app. With manage_queue, the app starts the queue at startup and stops it at shutdown.

    `model_names`: the names a request's `model` may give (default: the model's own name); any other
    is a 404, as vLLM answers. `allowed_hosts`: the Host headers served (default: any); `serve` sets
    the names of the address it binds, which stops DNS-rebinding pages from reading the server.
    """
    model_name = str(getattr(queue.model, "name", "model"))
    names = list(model_names or [model_name])

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
    # Set on a second shutdown signal: requests still being computed are answered 503 at once.
    app.state.abort = asyncio.Event()
    # Requests answered with an error before they reached the queue (bad JSON, unknown field, ...),
    # by status: the queue's own counts cannot see them.
    refused: Counter[int] = Counter()
    app.state.refused = refused
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(api.APIError)
    async def _api_error(_: HTTPRequest, e: api.APIError) -> JSONResponse:
        refused[e.status] += 1
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
        # 404 and 405 in OpenAI's error shape, like every other error this server answers.
        kind = "not_found" if e.status_code == 404 else None
        refused[e.status_code] += 1
        return JSONResponse(api.APIError(e.status_code, str(e.detail), code=kind).body(), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: HTTPRequest, e: ClientDisconnect) -> Response:
        return Response(status_code=499)  # the client left while sending its body; nobody reads this

    async def body_of(request: HTTPRequest) -> Any:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # Also what stops a web page's plain form POST (no CORS preflight) from filling the queue.
            raise api.APIError(415, "Content-Type must be application/json", code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise api.APIError(413, f"request body over {max_body_bytes} bytes", code="body_too_large")

        async def read() -> bytes:
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > max_body_bytes:
                    raise api.APIError(413, f"request body over {max_body_bytes} bytes", code="body_too_large")
            return raw

        try:
            raw = await asyncio.wait_for(read(), body_timeout_s)
        except TimeoutError:
            raise api.APIError(408, f"request body not received within {body_timeout_s:g} s",
                               code="request_timeout") from None
        try:
            return json.loads(raw)
        except RecursionError:
            raise api.APIError(400, "request body is nested too deeply") from None
        except ValueError:
            raise api.APIError(400, "request body is not valid JSON") from None

    def admit(prompt: Any, body: api._Body, *, stream: bool, chat_template: bool) -> Request:
        if app.state.stopping or not queue.running:
            raise api.APIError(503, "server is starting or stopping", type="server_error", code="unavailable",
                               headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})
        if body.model is not None and body.model not in names:
            raise api.APIError(404, f"The model `{body.model}` does not exist; this server serves "
                                    f"{', '.join(map(repr, names))}", param="model", code="model_not_found")
        default = DEFAULT_MAX_TOKENS if not chat_template else rest_of_context(prompt)
        req = queue.submit(prompt, stream=stream, chat_template=chat_template, **body.gen_kwargs(default))
        if req.status is RequestStatus.REJECTED:
            raise refusal_error(req)
        return req

    def rest_of_context(prompt: Any) -> int:
        """Chat's limit when a request sets none: as vLLM, the rest of the model's context (the answer
        then ends at the model's end-of-sequence token), within the queue's own cap."""
        try:
            used = queue.model.count_tokens(prompt)
        except Exception:  # noqa: BLE001 - a prompt the model cannot read is refused by submit(), with its reason
            return DEFAULT_MAX_TOKENS
        return max(1, min(MAX_NEW_TOKENS_LIMIT, queue.model.max_context - used))

    def refusal_error(req: Request) -> api.APIError:
        if req.refusal == "queue_full":
            return api.APIError(429, req.error or "queue full", type="rate_limit_error", code="queue_full",
                                headers={"Retry-After": str(retry_after())})
        if req.refusal == "invalid_request":
            return api.APIError(400, req.error or "invalid request", param=_param_of(req.error or ""))
        return api.APIError(503, req.error or "unavailable", type="server_error", code="unavailable",
                            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})

    def retry_after() -> int:
        """Seconds until the queue has room, roughly (waiting requests × mean service time), capped at
        what clients honour: a longer one makes them give up at once instead of retrying."""
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(queue.queue_size * (queue.mean_service_s or 1.0))))

    def outcome_error(req: Request) -> api.APIError:
        if req.status is RequestStatus.FAILED:
            return api.APIError(500, req.error or "model failed", type="server_error", code="model_error")
        return api.APIError(503, f"request cancelled: {req.error}", type="server_error", code="cancelled",
                            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})

    async def respond(request: HTTPRequest, req: Request, body: api._Body, chat: bool) -> Response:
        if body.stream:
            return EventSourceResponse(sse(req, body, chat), sep="\n", headers=_no_buffering())
        if not await finished_or_gone(request, req, app.state.abort):
            if app.state.abort.is_set():
                raise api.APIError(503, "server stopped before this request finished", type="server_error",
                                   code="unavailable", headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})
            queue.cancel(req)  # the client went away while it waited: free its place in line
            return Response(status_code=499)
        if req.status is not RequestStatus.COMPLETED:
            raise outcome_error(req)
        c = req.completion
        assert c is not None
        build = api.chat_response if chat else api.completion_response
        return JSONResponse(build(f"q{req.id}", model_name, c.text, c.finish_reason,
                                  api.usage(c.prompt_tokens, c.completion_tokens)), headers=timing_headers(req))

    async def sse(req: Request, body: api._Body, chat: bool) -> AsyncIterator[str]:
        chunks = api.ChunkWriter(f"q{req.id}", model_name, chat=chat)
        try:
            if chat:  # the first delta names the role, as OpenAI's does (clients build the message from it)
                yield json.dumps(chunks.role())
            delivered = 0
            async for piece in req.stream():
                chunk = chunks.text(piece)
                delivered += 1
                if body.continuous_usage:  # vLLM's continuous_usage_stats: the usage so far, on every chunk
                    # Counted by what this stream has handed out, not by what the model has produced by
                    # now: on a busy loop the model runs ahead of the stream.
                    chunk["usage"] = api.usage(req.prompt_tokens or 0, min(delivered, _tokens_so_far(req)))
                yield json.dumps(chunk)
            c = req.completion
            assert c is not None
            yield json.dumps({**chunks.finish(c.finish_reason), "queuelab": timing(req)})
            if body.include_usage:
                yield json.dumps(chunks.usage(api.usage(c.prompt_tokens, c.completion_tokens)))
        except RequestError:
            yield json.dumps(outcome_error(req).body())
        finally:
            if not req.done:
                queue.cancel(req)  # the client disconnected mid-stream
        yield "[DONE]"

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Response:
        body = api.parse(api.CompletionBody, await body_of(request))
        # As vLLM: a completion prompt goes to the model as it is; only chat applies the template.
        req = admit(body.prompt, body, stream=body.stream, chat_template=False)
        return await respond(request, req, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest) -> Response:
        body = api.parse(api.ChatBody, await body_of(request))
        req = admit(body.prompt(), body, stream=body.stream, chat_template=True)
        return await respond(request, req, body, chat=True)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "queuelab"}

    @app.api_route("/v1/models", methods=["GET", "HEAD"])  # HEAD: clients probe endpoints with it
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in names]}

    @app.api_route("/v1/models/{name:path}", methods=["GET", "HEAD"])
    async def model(name: str) -> dict[str, Any]:
        if name not in names:
            raise api.APIError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
        return model_card(name)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        h = queue.health()
        ok = queue.running and not app.state.stopping
        return JSONResponse({"status": "ok" if ok else h.state, "model_loaded": True, "model": model_name,
                             "worker_alive": h.worker_alive}, status_code=200 if ok else 503)

    @app.api_route("/stats", methods=["GET", "HEAD"])
    async def stats() -> dict[str, Any]:
        return {**queue.stats().as_dict(), "http_refused": {str(k): v for k, v in sorted(refused.items())}}

    registry = metrics_registry(queue, refused)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _tokens_so_far(req: Request) -> int:
    return req.sequence.completion_tokens if req.sequence is not None else req.tokens_streamed


def timing(req: Request) -> dict[str, float | None]:
    """The request's queue wait and service time as the server measured them, seconds."""
    return {"wait_s": req.wait, "service_s": req.service}


def timing_headers(req: Request) -> dict[str, str]:
    t = timing(req)
    return {h: f"{v:.6f}" for h, v in ((WAIT_HEADER, t["wait_s"]), (SERVICE_HEADER, t["service_s"])) if v is not None}


def _no_buffering() -> dict[str, str]:
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must pass tokens on at once


def _param_of(error: str) -> str | None:
    for needle, param in (("min_tokens", "min_tokens"), ("max_new_tokens", "max_tokens"),
                          ("temperature", "temperature"), ("seed", "seed"), ("stop", "stop"),
                          ("prompt", "prompt")):
        if needle in error:
            return param
    return None


async def finished_or_gone(request: HTTPRequest, req: Request, abort: asyncio.Event | None = None) -> bool:
    """Wait until the request is done (True), or the client has disconnected or `abort` is set (False)."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watchers = [asyncio.ensure_future(disconnected())] + ([asyncio.ensure_future(abort.wait())] if abort else [])
    try:
        await asyncio.wait([req.future, *watchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in watchers:
            w.cancel()
    return req.done


class QueueCollector:
    """A Prometheus collector that reads the queue's own numbers at scrape time.

    The queue already keeps its counts and cumulative latency histograms (the dashboard and `/stats`
    use them too), so this exports them rather than keeping a second set of metric objects that could
    drift from the first.
    """

    def __init__(self, queue: RequestQueue, refused: Counter[int] | None = None) -> None:
        self.queue, self.refused = queue, refused if refused is not None else Counter()

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
        yield CounterMetricFamily("queuelab_generated_tokens", "Tokens generated for completed requests.",
                                  value=q.total_tokens)
        http = CounterMetricFamily("queuelab_http_refused", "Requests answered with an error before they reached "
                                   "the queue (malformed, unknown field, wrong model, ...), by HTTP status.",
                                   labels=["status"])
        for status, n in sorted(self.refused.items()):
            http.add_metric([str(status)], n)
        yield http
        for kind, h in q.histograms().items():
            buckets = [("+Inf" if math.isinf(b) else str(b), n) for b, n in h.cumulative()]
            yield HistogramMetricFamily(f"queuelab_{kind}_seconds", f"{kind} of completed requests, seconds.",
                                        buckets=buckets, sum_value=h.total)


def metrics_registry(queue: RequestQueue, refused: Counter[int] | None = None) -> CollectorRegistry:
    """The queue's metrics, plus the standard process and platform metrics every exporter has."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue, refused))
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
    A second signal stops now: what still waits is cancelled (503), and the server exits without
    waiting for the batch being computed (its clients' connections close unanswered).
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app, self._stopping = app, False
        self._cancelling: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = getattr(self.app.state, "loop", None)
        if loop is None:
            return super().handle_exit(sig, frame)
        first, self._stopping = not self._stopping, True
        task = self._shutdown if first else self._stop_now
        loop.call_soon_threadsafe(lambda: loop.create_task(task()))

    async def _shutdown(self) -> None:
        self.app.state.stopping = True
        await self.app.state.queue.stop(drain=self.app.state.drain)
        self.should_exit = True

    async def _stop_now(self) -> None:
        self.app.state.stopping = True
        self.app.state.abort.set()
        # stop(drain=False) cancels what waits at once (answered 503); it would then wait for the running
        # batch, which is what a second signal says not to do, so it is not awaited.
        self._cancelling = asyncio.ensure_future(self.app.state.queue.stop(drain=False))
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


__all__ = ["create_app", "serve", "prometheus", "metrics_registry", "QueueCollector", "GracefulServer",
           "local_hosts"]
