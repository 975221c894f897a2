"""The HTTP endpoints and the error handlers; each reads what it needs from the app's `AppState`.

The endpoints carry comments, not docstrings: FastAPI would publish a docstring in /openapi.json.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from queuelab.errors import APIError
from queuelab.serve import openai_api as api
from queuelab.serve.completions import admit, read_json, respond
from queuelab.serve.state import AppState, app_state


# -- completions ------------------------------------------------------------------------------------
async def completions(request: HTTPRequest) -> Response:
    state = app_state(request.app)
    body = api.parse(api.CompletionBody, await _json(request, state))
    # As vLLM: a completion prompt goes to the model as it is; only chat applies the template.
    req = admit(state, body.prompt, body, chat_template=False)
    return await respond(state, request, req, body, chat=False)


async def chat_completions(request: HTTPRequest) -> Response:
    state = app_state(request.app)
    body = api.parse(api.ChatBody, await _json(request, state))
    req = admit(state, body.prompt(), body, chat_template=True)
    return await respond(state, request, req, body, chat=True)


async def _json(request: HTTPRequest, state: AppState) -> Any:
    return await read_json(request, state.max_body_bytes, state.body_timeout_s)


# -- models -----------------------------------------------------------------------------------------
async def models(request: HTTPRequest) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(n) for n in app_state(request.app).names]}


async def model(request: HTTPRequest, name: str) -> dict[str, Any]:
    if name not in app_state(request.app).names:
        raise APIError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
    return model_card(name)


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "queuelab"}


# -- the server's state -----------------------------------------------------------------------------
# 200 while the queue runs and the server is not stopping; 503 (with the queue's state) otherwise.
async def health(request: HTTPRequest) -> JSONResponse:
    state = app_state(request.app)
    h = state.queue.health()
    ok = state.queue.running and not state.stopping
    return JSONResponse({"status": "ok" if ok else h.state, "model_loaded": True, "model": state.model_name,
                         "worker_alive": h.worker_alive}, status_code=200 if ok else 503)


# The queue's statistics, plus the requests refused before they reached it, by HTTP status.
async def stats(request: HTTPRequest) -> dict[str, Any]:
    state = app_state(request.app)
    return {**state.queue.stats().as_dict(), "http_refused": {str(k): v for k, v in sorted(state.refused.items())}}


async def metrics(request: HTTPRequest) -> Response:
    return Response(generate_latest(app_state(request.app).registry), media_type=CONTENT_TYPE_LATEST)


# -- errors -----------------------------------------------------------------------------------------
class ErrorResponse(JSONResponse):
    """An error body as ASCII JSON. Errors repeat what the client sent (a model name, a value), and a
    lone surrogate in it ("\\ud800", valid JSON) cannot be encoded as UTF-8: escaped, it can."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def api_error(request: HTTPRequest, e: APIError) -> JSONResponse:
    app_state(request.app).refused[e.status] += 1
    return ErrorResponse(e.body(), status_code=e.status, headers=e.headers)


async def http_error(request: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
    """404 and 405 in OpenAI's error shape, like every other error this server answers."""
    kind = "not_found" if e.status_code == 404 else None
    app_state(request.app).refused[e.status_code] += 1
    return ErrorResponse(APIError(e.status_code, str(e.detail), code=kind).body(), status_code=e.status_code,
                         headers=getattr(e, "headers", None))


async def client_gone(request: HTTPRequest, e: ClientDisconnect) -> Response:
    return Response(status_code=499)  # the client left while sending its body; nobody reads this
