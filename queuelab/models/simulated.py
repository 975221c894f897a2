"""`SimulatedModel`: the model interface with no neural network; service-time distributions and step costs.

It sleeps in the calling thread on a schedule you choose — a per-request service time (the theory's
assumptions) or an engine's step costs (batching) — so experiments run in milliseconds, exactly.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from queuelab.checks import non_negative, positive_int
from queuelab.errors import SimulatedFailure
from queuelab.generation import GenerationParams
from queuelab.models.base import LanguageModel, RunningBatch
from queuelab.models.block_manager import BlockAccounting, BlockManager
from queuelab.models.calibration import Calibration, fit, measure
from queuelab.models.step_costs import StepCosts
from queuelab.sequence import Sequence, TokenCallback

_WORDS = ("queue", "token", "wait", "serve", "batch", "model", "latency", "request", "arrive", "depart",
          "server", "load", "time", "first", "in", "out")


@runtime_checkable
class ServiceTime(Protocol):
    """A service-time distribution: `sample` draws seconds for one request of `tokens` output tokens."""

    def sample(self, rng: random.Random, tokens: int) -> float: ...
    def mean(self, tokens: int) -> float: ...
    def scv(self, tokens: int) -> float:
        """Squared coefficient of variation, Var/mean²: 0 deterministic, 1 exponential (for M/G/1)."""
        ...


def _check_seconds(name: str, value: float) -> None:
    non_negative(name, value, unit="seconds")


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


_DEFAULT_SERVICE: Any = object()  # "not given": 0.1 s, unless step_costs are


def as_service_time(value: float | ServiceTime) -> ServiceTime:
    if isinstance(value, ServiceTime):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"service_time must be seconds or a distribution (Fixed, Exponential, PerToken), got {value!r}")
    return Fixed(value)


class SimulatedModel(LanguageModel):
    """A model with no neural network: deterministic words, produced on a schedule you choose.

    Two ways to say how long things take:

    - `service_time` (seconds or a distribution): each request's total time at batch size 1, the
      queueing-theory view. Its tokens come out evenly over that time. In a batch, a decode step
      takes as long as its slowest member's token: batching is free in this mode (an upper bound).
    - `step_costs` (`StepCosts`): an engine's view — prefill per prompt token, decode step cost as a
      function of batch size — so batching experiments behave like a real engine, in milliseconds.
      `SimulatedModel.calibrated_from(model)` measures these on a real model.

    Timing is honest: steps end on absolute deadlines, so sleep overshoot does not accumulate.
    """

    def __init__(
        self,
        service_time: float | ServiceTime = _DEFAULT_SERVICE,
        *,
        step_costs: StepCosts | None = None,
        seed: int | None = None,
        failure_rate: float = 0.0,
        fail_if: Callable[[str], bool] | None = None,
        max_context: int = 8192,
        name: str = "simulated",
        count_tokens: Callable[[str], int] | None = None,
        answer_tokens: Callable[[str], int] | None = None,
        kv_blocks: int = 4096,
        block_size: int = 16,
    ) -> None:
        super().__init__()
        #: The same KV-block accounting as a paged real model (no tensors): a budget a twin can run out of.
        self.kv_blocks = positive_int("kv_blocks", kv_blocks)
        self.block_size = positive_int("block_size", block_size)
        if step_costs is not None:
            if service_time is not _DEFAULT_SERVICE:
                raise ValueError("give service_time or step_costs, not both")
            if not isinstance(step_costs, StepCosts):
                raise ValueError(f"step_costs must be a StepCosts, got {step_costs!r}")
        self.step_costs = step_costs
        self.service_time = as_service_time(0.1 if service_time is _DEFAULT_SERVICE else service_time)
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate}")
        self.failure_rate = failure_rate
        self.fail_if = fail_if
        self.seed = seed
        self.max_context = max_context
        self.name = name
        self._count = count_tokens
        self._answer_tokens = answer_tokens
        self._rng = random.Random(seed)
        self.calibration: Calibration | None = None  # what calibrated_from / fitted_to measured

    @classmethod
    def calibrated_from(cls, model: LanguageModel, *, answer_tokens: Callable[[str], int] | None = None,
                        **kwargs: Any) -> SimulatedModel:
        """A twin of `model` whose step costs are measured on it (`calibration.measure`; takes seconds).

        `answer_tokens(prompt)`: the natural answer length per prompt (e.g. measured greedy lengths),
        so the twin stops where the real model would; without it the twin runs to max_new_tokens.
        What was measured is kept as `twin.calibration`.
        """
        return cls._twin(model, measure(model, **kwargs), f"twin of {model.name}", answer_tokens)

    @classmethod
    def fitted_to(cls, steps: Any, like: LanguageModel, *, answer_tokens: Callable[[str], int] | None = None,
                  **kwargs: Any) -> SimulatedModel:
        """A twin of `like` fitted to a real run's step log (`queue.steps()`; see `calibration.fit`)."""
        return cls._twin(like, fit(steps, **kwargs), f"twin of {like.name} (fitted)", answer_tokens)

    @classmethod
    def _twin(cls, model: LanguageModel, calibration: Calibration, name: str,
              answer_tokens: Callable[[str], int] | None) -> SimulatedModel:
        twin = cls(step_costs=calibration.costs, max_context=model.max_context, name=name,
                   count_tokens=model.count_tokens, answer_tokens=answer_tokens)
        twin.calibration = calibration
        return twin

    def count_tokens(self, prompt: str) -> int:
        return self._count(prompt) if self._count is not None else len(prompt.split())

    def _new_sequence(self, prompt: str, params: GenerationParams, on_token: TokenCallback | None,
                      chat_template: bool = True) -> Sequence:
        return Sequence(prompt, params, prompt_tokens=self.count_tokens(prompt), on_token=on_token)

    def new_batch(self) -> RunningBatch:
        return _SimulatedBatch(self)

    def _should_fail(self, prompt: str) -> bool:
        # Draw from the RNG on every call, so failures do not shift the service times of later requests.
        draw = self._rng.random()
        return draw < self.failure_rate or bool(self.fail_if and self.fail_if(prompt))

    @staticmethod
    def word(prompt: str, i: int) -> str:
        """Word i of the answer to `prompt`, stable across runs (crc32, unlike hash())."""
        return _WORDS[(zlib.crc32(prompt.encode()) + i) % len(_WORDS)]

    def answer_length(self, prompt: str, max_new_tokens: int) -> int:
        """Tokens the answer has before it stops: its natural length if `answer_tokens` says, capped."""
        if self._answer_tokens is None:
            return max_new_tokens
        return max(1, min(max_new_tokens, int(self._answer_tokens(prompt))))

    def tokens_for(self, seq: Sequence) -> int:
        """Tokens `seq` will produce: its answer's length, or all of max_new_tokens with ignore_eos,
        and more than min_tokens (an end-of-sequence token may only follow them, as in vLLM)."""
        p = seq.params
        natural = self.answer_length(seq.prompt, p.max_new_tokens)
        if p.ignore_eos:
            return p.max_new_tokens
        return max(natural, min(p.min_tokens + 1, p.max_new_tokens)) if p.min_tokens else natural

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parameters": 0,
            "dtype": "none",
            "device": "cpu",
            "memory_bytes": 0,
            "max_context": self.max_context,
            "service_time": None if self.step_costs else repr(self.service_time),
            "step_costs": repr(self.step_costs) if self.step_costs else None,
            "seed": self.seed,
            "kv_blocks": self.kv_blocks,
            "block_size": self.block_size,
        }


class _SimulatedBatch(BlockAccounting, RunningBatch):
    """Running simulated sequences; each step sleeps until its deadline."""

    def __init__(self, model: SimulatedModel) -> None:
        super().__init__(model)
        self.m = model
        self._overshoot = 0.0  # how late the last sleep woke up
        self._slot: dict[int, float] = {}  # service_time mode: seconds per token of each sequence
        self._length: dict[int, int] = {}  # tokens each sequence will produce before it stops
        self.blocks = BlockManager(model.kv_blocks, model.block_size)

    def _start(self) -> float:
        # While sequences run, the next step starts as if the last sleep had woken on time: overshoot
        # does not accumulate over a long run of steps, while real gaps (a thread hop) still count.
        return time.perf_counter() - self._overshoot

    def _sleep(self, start: float, seconds: float) -> None:
        deadline = start + seconds
        _sleep_until(deadline)
        self._overshoot = min(max(0.0, time.perf_counter() - deadline), 0.005)

    def _prefill(self, seqs: list[Sequence]) -> int:
        start = self._start()
        m, costs = self.m, self.m.step_costs
        lengths, slots, failed = {}, {}, None
        for s in seqs:  # every draw is made, failure or not, so later requests' draws do not shift
            lengths[id(s)] = n = m.tokens_for(s)
            if m._should_fail(s.prompt) and failed is None:
                failed = s
            if costs is None:
                slots[id(s)] = m.service_time.sample(m._rng, n) / n
        if failed is not None:
            raise SimulatedFailure(f"simulated model failure on prompt {failed.prompt[:30]!r}")
        self.blocks.reserve_all([(s, s.prompt_tokens) for s in seqs])
        self._length.update(lengths)
        self._slot.update(slots)
        if costs is None:
            cost = max(slots.values())
        else:
            cost = sum(costs.prefill(s.prompt_tokens) for s in seqs)
        self._sleep(start, cost)
        self.running.extend(seqs)
        self._emit(seqs)
        return sum(s.prompt_tokens for s in seqs)

    def _decode(self, seqs: list[Sequence]) -> None:
        start = self._start()
        self.blocks.reserve_all([(s, 1) for s in seqs])
        costs = self.m.step_costs
        cost = max(self._slot[id(s)] for s in seqs) if costs is None else costs.decode(len(seqs))
        self._sleep(start, cost)
        self._emit(seqs)

    def _emit(self, seqs: list[Sequence]) -> None:
        now = time.perf_counter()
        for s in seqs:
            i = len(s.output_ids)
            word = self.m.word(s.prompt, i)
            n = self._length[id(s)]
            s.append(i, now, eos=i + 1 == n < s.params.max_new_tokens, piece=word if i == 0 else " " + word)

    def _keep(self, indices: list[int]) -> None:
        if not indices:  # an idle engine starts its next step afresh: no debt carried across requests
            self._overshoot = 0.0
        kept = {id(self.running[i]) for i in indices}
        for s in self.running:
            if id(s) not in kept:
                self._slot.pop(id(s), None)
                self._length.pop(id(s), None)
                self.blocks.free_owner(s)




def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
