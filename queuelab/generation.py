"""What a caller asks a model for (`GenerationParams`) and what comes back (`Completion`).

Validation lives here so the model and the queue refuse bad input with the same words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

#: Upper bound on max_new_tokens. A sequential CPU server producing more than this per request
#: is a mistake in the experiment, not a workload; it also bounds a request's worst-case service time.
MAX_NEW_TOKENS_LIMIT = 4096

FinishReason = Literal["stop", "length"]

#: Seeds are 64-bit signed, as torch's generators (and vLLM) take them.
SEED_RANGE = (-(2**63), 2**63 - 1)
#: At most this many stop strings, as OpenAI allows.
MAX_STOP_STRINGS = 4


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Generation options, checked on construction.

    temperature 0 means greedy decoding; `seed` makes sampling reproducible. `stop` ends the answer
    before the first of these strings (finish reason "stop"; the string itself is not returned).
    `ignore_eos` keeps generating past the end-of-sequence token, so every answer is exactly
    `max_new_tokens` long (benchmarks use it to fix output lengths); `min_tokens` ignores it until
    that many tokens exist. Both are vLLM's options of the same names.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0

    def __post_init__(self) -> None:
        # bool is an int subclass; True tokens is never what someone meant.
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an int, got {type(self.max_new_tokens).__name__}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(
                f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}"
            )
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"temperature must be a number, got {type(self.temperature).__name__}")
        # float() of a huge int raises OverflowError: it is out of range, say so as bad input.
        if not _finite_float(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {_short(self.temperature)}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise ValueError(f"seed must be an int or None, got {type(self.seed).__name__}")
            if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
                raise ValueError(f"seed must fit in 64 bits (between -2**63 and 2**63-1), got {_short(self.seed)}")
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an int >= 0, got {_short(self.min_tokens)}")
        if self.min_tokens > self.max_new_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})")

    def ends_at_eos(self, produced: int) -> bool:
        """Whether an end-of-sequence token, as token number `produced` (1-based), ends the answer."""
        return not self.ignore_eos and produced > self.min_tokens

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> GenerationParams:
        """Build from keyword arguments, naming any unknown option instead of dropping it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"unknown generation option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**kwargs)


def check_prompt(prompt: object) -> str:
    """Return the prompt if it is a non-empty string of valid Unicode, else raise ValueError naming the problem."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    _check_unicode("prompt", prompt)
    return prompt


def _check_unicode(name: str, text: str) -> None:
    # A lone surrogate (JSON allows "\ud800") is a str Python holds but no tokenizer can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text: lone surrogate {text[e.start]!r} at "
                         f"character {e.start}") from None


def _stop_strings(stop: object) -> tuple[str, ...]:
    """None, one string, or a list of up to MAX_STOP_STRINGS non-empty strings, as a tuple."""
    if stop is None:
        return ()
    items = (stop,) if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    if len(items) > MAX_STOP_STRINGS:
        raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(items)}")
    if any(not s for s in items):
        raise ValueError("stop strings must not be empty")
    for s in items:
        _check_unicode("stop", s)
    return tuple(items)


def _finite_float(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _short(value: object) -> str:
    """repr, shortened: a 400-digit number in an error message helps nobody."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


@dataclass(frozen=True)
class Completion:
    """One generated answer and how long it took (seconds, measured inside the model call)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    duration_s: float
    finish_reason: FinishReason

    @property
    def tokens_per_s(self) -> float:
        """Decode rate over the whole call (prefill included), as a user experiences it."""
        return self.completion_tokens / self.duration_s if self.duration_s > 0 else float("nan")
