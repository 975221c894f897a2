"""The OpenAI-compatible wire format: request bodies (validated), responses, stream chunks, errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from queuelab.errors import APIError
from queuelab.generation import MAX_NEW_TOKENS_LIMIT

Number = Annotated[float, Field(strict=True)]  # an int or a float, never a bool


def _default_only(*defaults: Any) -> Callable[[Any], bool]:
    return lambda v: any(v == d and type(v) is type(d) for d in defaults)


#: Standard OpenAI (and vLLM) fields that queuelab accepts only at the value that means "default".
#: Clients fill these in by habit (`stop: null`, `n: 1`); any other value is a 400 naming the field,
#: never silently ignored. Fields queuelab implements (`stop`, `ignore_eos`, `min_tokens`, `seed`,
#: `temperature`, `max_tokens`, `stream_options`, `user`) are declared on the bodies below.
DEFAULT_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_default_only(1, None), "1 (one choice per request)"),
    "best_of": (_default_only(1, None), "1"),
    "top_p": (_default_only(1, 1.0, None), "1 (sampling is by temperature alone)"),
    "top_k": (_default_only(-1, 0, None), "-1 or 0 (no top-k)"),
    "presence_penalty": (_default_only(0, 0.0, None), "0"),
    "frequency_penalty": (_default_only(0, 0.0, None), "0"),
    "repetition_penalty": (_default_only(1, 1.0, None), "1"),
    "logprobs": (_default_only(None, False), "null or false"),
    "top_logprobs": (_default_only(None, 0), "null or 0"),
    "echo": (_default_only(None, False), "null or false"),
    "suffix": (_default_only(None), "null"),
    "logit_bias": (lambda v: v is None or v == {}, "null or {}"),
    "response_format": (lambda v: v is None or v == {"type": "text"}, 'null or {"type": "text"}'),
    "tools": (lambda v: v is None or v == [], "null or [] (no tool calls)"),
    "tool_choice": (_default_only(None, "none", "auto"), 'null, "none" or "auto"'),
    "parallel_tool_calls": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "service_tier": (lambda v: v is None or v in ("auto", "default"), 'null, "auto" or "default"'),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = False
    # vLLM's: every chunk carries the usage so far (load generators read it to count tokens as they come).
    continuous_usage_stats: StrictBool | None = False


class _Body(BaseModel):
    # Unknown fields are an error that names them, not silently dropped.
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: Number | None = Field(default=None, ge=0.0, le=2.0)
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    stop: StrictStr | list[StrictStr] | None = None
    ignore_eos: StrictBool = False  # vLLM's: go on past the end-of-sequence token
    min_tokens: StrictInt = Field(default=0, ge=0)  # vLLM's

    def gen_kwargs(self, default_max_tokens: int) -> dict[str, Any]:
        """The queue's generation options; `default_max_tokens` when the request sets no limit."""
        return {"max_new_tokens": self.max_completion_tokens or self.max_tokens or default_max_tokens,
                "temperature": 1.0 if self.temperature is None else self.temperature, "seed": self.seed,
                "stop": self.stop, "ignore_eos": self.ignore_eos, "min_tokens": self.min_tokens}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    @property
    def limit(self) -> int | None:
        """The request's token limit, if it set one."""
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(_Body):
    prompt: StrictStr | list[StrictStr]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send exactly one prompt per request (a list of one string is accepted)")
            return v[0]
        return v


class TextPart(BaseModel):
    """A content part; only text parts carry anything a text model can read."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart] | None = None

    @property
    def text(self) -> str:
        """The message's text: a string as it is; text parts joined by newlines, as vLLM joins them."""
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)

    def prompt(self) -> str:
        """One user message is the prompt as is; a conversation is flattened into one user turn
        (the model's chat template is then applied to it), which keeps every request one queue item."""
        if len(self.messages) == 1 and self.messages[0].role == "user":
            return self.messages[0].text
        return "\n".join(f"{m.role.capitalize()}: {m.text}" for m in self.messages)


def parse(cls: type[_Body], data: Any) -> Any:
    """Validate a JSON body; on failure raise a 400 naming the first offending field."""
    if isinstance(data, dict):
        data = _drop_defaults(data)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise APIError(400, f"{field}: {msg}" if field else msg, param=field) from None


def _drop_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the default-valued standard fields queuelab does not implement; 400 for any other value."""
    for name, (is_default, allowed) in DEFAULT_ONLY.items():
        if name in data and not is_default(data[name]):
            raise APIError(400, f"{name}: not supported by queuelab; accepted values: {allowed}", param=name,
                           code="unsupported_parameter")
    return {k: v for k, v in data.items() if k not in DEFAULT_ONLY}


# -- responses --------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(rid: str, model: str, text: str, finish: str, u: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], "usage": u}


def chat_response(rid: str, model: str, text: str, finish: str, u: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": u}


def completion_chunk(rid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_chunk(rid: str, model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class ChunkWriter:
    """The stream chunks of one request, each with the id, object type, time and model every chunk carries."""

    def __init__(self, rid: str, model: str, *, chat: bool) -> None:
        self.rid, self.model, self.chat = rid, model, chat
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices}

    def _choice(self, text: str | None, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, str] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def role(self) -> dict[str, Any]:
        """Chat's first chunk: the role, empty content."""
        return self._chunk([self._choice("", None, role=True)])

    def text(self, piece: str) -> dict[str, Any]:
        return self._chunk([self._choice(piece, None)])

    def finish(self, reason: str) -> dict[str, Any]:
        return self._chunk([self._choice(None, reason)])

    def usage(self, u: dict[str, int]) -> dict[str, Any]:
        """The last chunk when `stream_options.include_usage`: no choices, the usage."""
        return {**self._chunk([]), "usage": u}
