"""`HTTPTarget`: the load generator's seam pointed at any OpenAI-compatible server over HTTP.

Works against `queuelab serve` and, by design, vLLM, TGI or llama.cpp's server. Requests stream
(`stream: true`, read with httpx-sse), so time to first token is measured. Timestamps are the
client's: `arrived` is when the request was sent, `finished` when the stream ended.

`started` (the end of the wait) depends on what the server tells. queuelab's server reports each
request's queue wait in the stream's last chunk, so `started` is `arrived` + that wait and a run
over HTTP splits wait and service as an in-process run does. Other servers do not say: there
`started` is the first token's arrival, and `wait` is the time to first token (prefill included).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from httpx_sse import aconnect_sse

from queuelab.generation import Completion, GenerationParams
from queuelab.load.targets import Target
from queuelab.request import Request
from queuelab.request import RequestStatus as S

_REFUSALS = {400: "invalid_request", 413: "invalid_request", 422: "invalid_request", 429: "queue_full",
             503: "unavailable"}


class HTTPTarget(Target):
    """Sends each request to `{base_url}/v1/chat/completions` (or completions) as a streaming POST.

    Chat is the default: the server then applies the model's chat template, as the queue does in
    process, so the same prompts give the same answers. `chat=False` sends raw completions.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, *,
                 chat: bool = True, timeout: float = 600.0, max_connections: int = 1024) -> None:
        import httpx  # the server extra

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model, self.chat = model, chat
        self.name = f"http:{self.base_url}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                         limits=httpx.Limits(max_connections=max_connections,
                                                             max_keepalive_connections=max_connections))
        self._ids = itertools.count(1)
        self._tasks: dict[Request, asyncio.Task[None]] = {}

    async def __aenter__(self) -> HTTPTarget:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._client.aclose()

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.base_url, "model": {"name": self.model or "(server default)"},
                "endpoint": "chat/completions" if self.chat else "completions"}

    def submit(self, prompt: str, **gen_kwargs: Any) -> Request:
        req = Request(id=next(self._ids), prompt=prompt, params=None, arrived=time.perf_counter())
        try:
            req.params = GenerationParams.from_kwargs(gen_kwargs)
        except ValueError as e:  # refused here, as the queue would: no request is sent
            req.refusal = "invalid_request"
            req.advance(S.REJECTED, req.arrived, error=f"invalid request: {e}")
            return req
        task = asyncio.get_running_loop().create_task(self._send(req))
        self._tasks[req] = task
        task.add_done_callback(lambda _t: self._tasks.pop(req, None))
        return req

    def cancel(self, request: Request) -> bool:
        """Close the request's connection; a server like queuelab's then drops it from its queue."""
        task = self._tasks.get(request)
        if task is None or task.done() or request.status is S.PROCESSING:
            return False
        task.cancel()
        return True

    def _body(self, req: Request) -> dict[str, Any]:
        p = req.params
        assert p is not None
        body: dict[str, Any] = {"max_tokens": p.max_new_tokens, "temperature": p.temperature, "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.model:
            body["model"] = self.model
        if p.seed is not None:
            body["seed"] = p.seed
        if self.chat:
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        return body

    async def _send(self, req: Request) -> None:
        path = "/v1/chat/completions" if self.chat else "/v1/completions"
        try:
            async with aconnect_sse(self._client, "POST", path, json=self._body(req)) as source:
                if source.response.status_code != 200:
                    await self._refused(req, source.response)
                    return
                req.advance(S.QUEUED, time.perf_counter())
                await self._read_stream(req, source)
        except asyncio.CancelledError:
            now = time.perf_counter()
            if req.status is S.PROCESSING:
                req.advance(S.FAILED, now, error="cancelled by caller while streaming")
            elif not req.done:
                req.advance(S.CANCELLED, now, error="cancelled by caller")
            raise
        except Exception as e:  # network errors, a malformed stream: this request fails, the run goes on
            if not req.done:
                req.advance(S.FAILED, time.perf_counter(), error=f"{type(e).__name__}: {e}")

    async def _refused(self, req: Request, resp: Any) -> None:
        raw = await resp.aread()
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace")[:200]
        error = f"HTTP {resp.status_code}: {message}"
        now = time.perf_counter()
        if resp.status_code in _REFUSALS:
            req.refusal = _REFUSALS[resp.status_code]
            req.advance(S.REJECTED, now, error=error)
        else:
            req.advance(S.FAILED, now, error=error)

    async def _read_stream(self, req: Request, source: Any) -> None:
        pieces: list[str] = []
        finish, usage, server = None, None, None
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                break
            event = json.loads(sse.data)
            if "error" in event:
                now = time.perf_counter()
                if req.status is S.QUEUED:
                    req.advance(S.PROCESSING, now)
                req.advance(S.FAILED, now, error=f"server: {event['error'].get('message')}")
                return
            usage = event.get("usage") or usage
            server = event.get("queuelab") or server
            for choice in event.get("choices") or []:
                text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if text:
                    if req.first_token is None:
                        req.first_token = time.perf_counter()
                        req.advance(S.PROCESSING, req.first_token)
                    pieces.append(text)
                    req.tokens_streamed += 1
                finish = choice.get("finish_reason") or finish
        now = time.perf_counter()
        if req.status is S.QUEUED:  # an empty answer: no token ever came
            req.advance(S.PROCESSING, now)
        _use_server_wait(req, server)
        started = req.started if req.started is not None else now
        completion = Completion(
            "".join(pieces), int((usage or {}).get("prompt_tokens", 0)),
            int((usage or {}).get("completion_tokens", len(pieces))),
            (req.first_token or now) - req.arrived, now - started, finish if finish in ("stop", "length") else "length")
        req.advance(S.COMPLETED, now, completion=completion)


def _use_server_wait(req: Request, server: dict[str, Any] | None) -> None:
    """Move `started` to where the server's queue released the request, if the server said.

    The client saw PROCESSING begin at the first token; the server knows when the request left
    its queue. Clamped between the send and the first token: the two clocks differ by network time.
    """
    wait = (server or {}).get("wait_s")
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0 or req.started is None:
        return
    req.started = min(req.arrived + float(wait), req.started)
