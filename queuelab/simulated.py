"""`SimulatedModel`: the model interface with no neural network, and service-time distributions.

It sleeps in the calling thread for a service time drawn from a distribution you choose, so queueing
experiments get exact, known service times (the theory's assumptions) and run in milliseconds.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from .generation import Completion, GenerationParams
from .model import LanguageModel, TokenCallback

_WORDS = ("queue", "token", "wait", "serve", "batch", "model", "latency", "request", "arrive", "depart",
          "server", "load", "time", "first", "in", "out")


class SimulatedFailure(RuntimeError):
    """Raised by a SimulatedModel on purpose, to exercise failure handling."""


@runtime_checkable
class ServiceTime(Protocol):
    """A service-time distribution: `sample` draws seconds for one request of `tokens` output tokens."""

    def sample(self, rng: random.Random, tokens: int) -> float: ...
    def mean(self, tokens: int) -> float: ...
    def scv(self, tokens: int) -> float:
        """Squared coefficient of variation, Var/mean²: 0 deterministic, 1 exponential (for M/G/1)."""
        ...


def _check_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


@dataclass(frozen=True)
class Fixed:
    """The same service time for every request (the D in M/D/1)."""

    seconds: float

    def __post_init__(self) -> None:
        _check_seconds("seconds", self.seconds)

    def sample(self, rng: random.Random, tokens: int) -> float:
        return float(self.seconds)

    def mean(self, tokens: int) -> float:
        return float(self.seconds)

    def scv(self, tokens: int) -> float:
        return 0.0


@dataclass(frozen=True)
class Exponential:
    """Exponentially distributed service time with the given mean (the second M in M/M/1)."""

    mean_s: float

    def __post_init__(self) -> None:
        _check_seconds("mean_s", self.mean_s)
        if self.mean_s == 0:
            raise ValueError("mean_s must be > 0")

    def sample(self, rng: random.Random, tokens: int) -> float:
        return rng.expovariate(1.0 / self.mean_s)

    def mean(self, tokens: int) -> float:
        return float(self.mean_s)

    def scv(self, tokens: int) -> float:
        return 1.0


@dataclass(frozen=True)
class PerToken:
    """prefill_s + seconds_per_token × output tokens: how a real decoder's time grows with length."""

    seconds_per_token: float
    prefill_s: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds("seconds_per_token", self.seconds_per_token)
        _check_seconds("prefill_s", self.prefill_s)

    def sample(self, rng: random.Random, tokens: int) -> float:
        return self.mean(tokens)

    def mean(self, tokens: int) -> float:
        return self.prefill_s + self.seconds_per_token * tokens

    def scv(self, tokens: int) -> float:
        return 0.0


def as_service_time(value: float | ServiceTime) -> ServiceTime:
    if isinstance(value, ServiceTime):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"service_time must be seconds or a distribution (Fixed, Exponential, PerToken), got {value!r}")
    return Fixed(value)


class SimulatedModel(LanguageModel):
    """Sleeps for a service time, then returns deterministic text of `max_new_tokens` tokens.

    Tokens are whitespace-separated words. Timing is honest: tokens are released on a schedule of
    absolute deadlines, so sleep overshoot does not accumulate over a long answer.
    """

    def __init__(
        self,
        service_time: float | ServiceTime = 0.1,
        *,
        seed: int | None = None,
        failure_rate: float = 0.0,
        fail_if: Callable[[str], bool] | None = None,
        max_context: int = 8192,
        name: str = "simulated",
    ) -> None:
        super().__init__()
        self.service_time = as_service_time(service_time)
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate}")
        self.failure_rate = failure_rate
        self.fail_if = fail_if
        self.seed = seed
        self.max_context = max_context
        self.name = name
        self._rng = random.Random(seed)

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def _should_fail(self, prompt: str) -> bool:
        # Draw from the RNG on every call, so failures do not shift the service times of later requests.
        draw = self._rng.random()
        return draw < self.failure_rate or bool(self.fail_if and self.fail_if(prompt))

    def _words(self, prompt: str, n: int) -> list[str]:
        start = zlib.crc32(prompt.encode())  # stable across runs, unlike hash()
        return [_WORDS[(start + i) % len(_WORDS)] for i in range(n)]

    def _generate(self, prompt: str, params: GenerationParams, on_token: TokenCallback | None) -> Completion:
        n = params.max_new_tokens
        t0 = time.perf_counter()
        fail = self._should_fail(prompt)
        duration = self.service_time.sample(self._rng, n)
        if fail:
            raise SimulatedFailure(f"simulated model failure on prompt {prompt[:30]!r}")
        words = self._words(prompt, n)
        first = None
        for i, word in enumerate(words):
            _sleep_until(t0 + duration * (i + 1) / n)
            if first is None:
                first = time.perf_counter()
            if on_token is not None:
                on_token(word if i == 0 else " " + word)
        t1 = time.perf_counter()
        return Completion(" ".join(words), self.count_tokens(prompt), n, (first or t1) - t0, t1 - t0, "length")

    def _generate_batch(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        # One "forward pass" for the batch: it takes as long as its slowest member.
        t0 = time.perf_counter()
        n = params.max_new_tokens
        durations = [self.service_time.sample(self._rng, n) for _ in prompts]
        _sleep_until(t0 + max(durations))
        t1 = time.perf_counter()
        return [
            Completion(" ".join(self._words(p, n)), self.count_tokens(p), n, (t1 - t0) / n, t1 - t0, "length")
            for p in prompts
        ]

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parameters": 0,
            "dtype": "none",
            "device": "cpu",
            "memory_bytes": 0,
            "max_context": self.max_context,
            "service_time": repr(self.service_time),
            "seed": self.seed,
        }


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
