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


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Generation options, checked on construction.

    temperature 0 means greedy decoding; `seed` makes sampling reproducible.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None

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
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {type(self.seed).__name__}")

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
    """Return the prompt if it is a non-empty string, else raise ValueError naming the problem."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    return prompt


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
