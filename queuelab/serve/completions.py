"""Serving one completion: read its JSON body, put it in the queue, answer with JSON or an SSE stream.

Every refusal is raised as an `APIError`, which the app answers in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from queuelab.engine.request_queue import RequestQueue
from queuelab.errors import APIError, RequestError
from queuelab.generation import MAX_NEW_TOKENS_LIMIT
from queuelab.request import Request, RequestStatus
from queuelab.serve import openai_api as api
from queuelab.serve.state import AppState

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


# -- the request ------------------------------------------------------------------------------------
async def read_json(request: HTTPRequest, max_bytes: int, timeout_s: float) -> Any:
    """The parsed JSON body: 415 unless declared JSON, 413 over `max_bytes`, 408 if not all in within
    `timeout_s`, 400 if it does not parse."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        # Also what stops a web page's plain form POST (no CORS preflight) from filling the queue.
        raise APIError(415, "Content-Type must be application/json", code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw = await asyncio.wait_for(_read_body(request, max_bytes), timeout_s)
    except TimeoutError:
        raise APIError(408, f"request body not received within {timeout_s:g} s", code="request_timeout") from None
    try:
        return json.loads(raw)
    except RecursionError:
        raise APIError(400, "request body is nested too deeply") from None
    except ValueError:
        raise APIError(400, "request body is not valid JSON") from None


async def _read_body(request: HTTPRequest, max_bytes: int) -> bytes:
    """The body as it arrives, refused as soon as it passes `max_bytes` (whatever Content-Length said)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise _too_large(max_bytes)
    return raw


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body over {max_bytes} bytes", code="body_too_large")


def admit(state: AppState, prompt: Any, body: api._Body, *, chat_template: bool) -> Request:
    """The request, submitted to the queue; or the error that refuses it: 503 while the server starts or
    stops, 404 for a model it does not serve, then what the queue refuses (429 full, 400 invalid)."""
    queue = state.queue
    if state.stopping or not queue.running:
        raise _unavailable("server is starting or stopping")
    if body.model is not None and body.model not in state.names:
        raise APIError(404, f"The model `{body.model}` does not exist; this server serves "
                            f"{', '.join(map(repr, state.names))}", param="model", code="model_not_found")
    default = DEFAULT_MAX_TOKENS if not chat_template else rest_of_context(queue, prompt)
    req = queue.submit(prompt, stream=body.stream, chat_template=chat_template, **body.gen_kwargs(default))
    if req.status is RequestStatus.REJECTED:
        raise refusal_error(queue, req)
    return req


def rest_of_context(queue: RequestQueue, prompt: Any) -> int:
    """Chat's limit when a request sets none: as vLLM, the rest of the model's context (the answer
    then ends at the model's end-of-sequence token), within the queue's own cap."""
    try:
        used = queue.model.count_tokens(prompt)
    except Exception:  # noqa: BLE001 - a prompt the model cannot read is refused by submit(), with its reason
        return DEFAULT_MAX_TOKENS
    return max(1, min(MAX_NEW_TOKENS_LIMIT, queue.model.max_context - used))


def refusal_error(queue: RequestQueue, req: Request) -> APIError:
    """The error for a request the queue rejected, by its reason: 429 full, 400 invalid, else 503."""
    if req.refusal == "queue_full":
        return APIError(429, req.error or "queue full", type="rate_limit_error", code="queue_full",
                        headers={"Retry-After": str(retry_after(queue))})
    if req.refusal == "invalid_request":
        return APIError(400, req.error or "invalid request", param=_param_of(req.error or ""))
    return _unavailable(req.error or "unavailable")


def retry_after(queue: RequestQueue) -> int:
    """Seconds until the queue has room, roughly, capped at what clients honour (a longer one makes
    them give up at once instead of retrying): the waiting requests ÷ the completions per second of
    the last window (a batch serves several at once), or × the mean service time when nothing
    completed lately. Before the first completion nothing is measured: 1 s, the shortest, rather
    than a guess (a cold server's flood was told 50 s for a queue that cleared in 1.5)."""
    rec, now = queue.recorder, time.perf_counter()
    req_s, _ = rec.rates.rates(now, rec.started_at or now)
    if req_s > 0:
        estimate = queue.queue_size / req_s
    elif queue.mean_service_s is not None:
        estimate = queue.queue_size * queue.mean_service_s
    else:
        return 1
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(estimate)))


def _param_of(error: str) -> str | None:
    """The request field a queue refusal's message is about, for the error's `param`."""
    for needle, param in (("min_tokens", "min_tokens"), ("max_new_tokens", "max_tokens"),
                          ("temperature", "temperature"), ("seed", "seed"), ("stop", "stop"),
                          ("prompt", "prompt")):
        if needle in error:
            return param
    return None


def _unavailable(message: str, code: str = "unavailable") -> APIError:
    """A 503 that a client may retry shortly."""
    return APIError(503, message, type="server_error", code=code,
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


def outcome_error(req: Request) -> APIError:
    """The error for an admitted request that did not complete: 500 if the model failed, else 503."""
    if req.status is RequestStatus.FAILED:
        return APIError(500, req.error or "model failed", type="server_error", code="model_error")
    return _unavailable(f"request cancelled: {req.error}", code="cancelled")


# -- the answer ------------------------------------------------------------------------------------
async def respond(state: AppState, request: HTTPRequest, req: Request, body: api._Body, *, chat: bool) -> Response:
    """A stream at once; otherwise the completion once the request is done. 503 if the server is told
    to stop now meanwhile; 499 (and the request cancelled) if the client leaves while it waits."""
    if body.stream:
        return EventSourceResponse(stream_events(state, req, body, chat=chat), sep="\n", headers=_no_buffering())
    if not await finished_or_gone(request, req, state.abort):
        if state.abort.is_set():
            raise _unavailable("server stopped before this request finished")
        state.queue.cancel(req)  # the client went away while it waited: free its place in line
        return Response(status_code=499)
    if req.status is not RequestStatus.COMPLETED:
        raise outcome_error(req)
    c = req.completion
    assert c is not None
    build = api.chat_response if chat else api.completion_response
    return JSONResponse(build(f"q{req.id}", state.model_name, c.text, c.finish_reason,
                              api.usage(c.prompt_tokens, c.completion_tokens)), headers=timing_headers(req))


async def stream_events(state: AppState, req: Request, body: api._Body, *, chat: bool) -> AsyncIterator[str]:
    """The SSE data of a streamed answer: a chunk per piece, the finish chunk (with the request's timing),
    the usage if asked, then [DONE]; an error body in place of the rest if the request fails on the way."""
    chunks = api.ChunkWriter(f"q{req.id}", state.model_name, chat=chat)
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
            state.queue.cancel(req)  # the client disconnected mid-stream
    yield "[DONE]"


def _tokens_so_far(req: Request) -> int:
    return req.sequence.completion_tokens if req.sequence is not None else req.tokens_streamed


def _no_buffering() -> dict[str, str]:
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must pass tokens on at once


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


def timing(req: Request) -> dict[str, float | None]:
    """The request's queue wait and service time as the server measured them, seconds."""
    return {"wait_s": req.wait, "service_s": req.service}


def timing_headers(req: Request) -> dict[str, str]:
    """`timing` as response headers (those measured)."""
    t = timing(req)
    return {h: f"{v:.6f}" for h, v in ((WAIT_HEADER, t["wait_s"]), (SERVICE_HEADER, t["service_s"])) if v is not None}
