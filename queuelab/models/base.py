"""The model interface: `LanguageModel` (whole calls and steps) and the `RunningBatch` a model steps.

Models work in steps (prefill, decode one token, release) on a `RunningBatch`; `generate` and
`generate_batch` are loops over those steps. Every step is blocking and thread-safe (one step at a
time per model, unless `concurrent_steps` allows more), so the queue runs them in a worker thread
while the event loop stays free.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass
from typing import Any

from queuelab.checks import positive_int
from queuelab.generation import Completion, GenerationParams, check_prompt
from queuelab.metrics import KVUsage
from queuelab.sequence import Sequence, TokenCallback

EMBEDDED = "smollm2-135m"
TINY = "tiny-random"


class LanguageModel(ABC):
    """What the queue needs from a model.

    Two ways in, one code path: whole calls (`generate`, `generate_batch`) are loops over the step
    interface that the queue's batching engine drives directly (`new_sequence`, then a
    `RunningBatch`'s `prefill` / `decode` / `release`). Subclasses implement `count_tokens`,
    `_new_sequence`, `new_batch` and `info`.
    """

    name: str
    max_context: int

    def __init__(self) -> None:
        # One model step at a time by default. Steps of different batches (a queue's, a direct
        # generate call's) may interleave; each batch owns its state. `concurrent_steps` lets several
        # steps run at once, for worker threads that share the model: each batch has its own KV cache and a forward pass only reads the weights, so
        # concurrent steps of different batches give the same answers (tests check the greedy ones).
        self._lock: threading.Lock | threading.BoundedSemaphore = threading.Lock()
        self._concurrent_steps = 1

    @property
    def concurrent_steps(self) -> int:
        """How many steps (each of its own batch) may run on this model at the same time; 1 by default.

        Change it only while no step runs (a queue with `workers=N` on this model sets it while it runs).
        """
        return self._concurrent_steps

    @concurrent_steps.setter
    def concurrent_steps(self, n: int) -> None:
        n = positive_int("concurrent_steps", n)
        # A plain lock for one at a time (what every step has always taken); a semaphore for more.
        self._lock = threading.Lock() if n == 1 else threading.BoundedSemaphore(n)
        self._concurrent_steps = n

    # -- the step interface -----------------------------------------------------------------------
    def new_sequence(self, prompt: object, params: GenerationParams, *,
                     on_token: TokenCallback | None = None, chat_template: bool = True) -> Sequence:
        """Check and tokenize a request (once), without running anything.

        `chat_template`: an instruct model sees the prompt as a user's chat message (its template
        applied); False gives it the text as it is, as an OpenAI `/v1/completions` prompt.
        Raises ValueError naming the problem, so the queue refuses bad input at the door.
        """
        prompt = check_prompt(prompt)
        seq = self._new_sequence(prompt, params, on_token, chat_template)
        if seq.prompt_tokens + params.max_new_tokens > self.max_context:
            raise ValueError(
                f"prompt is too long: {seq.prompt_tokens} prompt tokens + max_new_tokens {params.max_new_tokens} "
                f"exceeds the model's context of {self.max_context} tokens"
            )
        return seq

    @abstractmethod
    def new_batch(self) -> RunningBatch:
        """An empty batch of running sequences, with its own KV state."""

    # -- whole calls, as loops over steps -----------------------------------------------------------
    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
    ) -> Completion:
        """Generate one completion. `on_token` receives each new piece of text as it is produced."""
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return self.run_to_completion([self.new_sequence(prompt, params, on_token=on_token)])[0]

    def generate_batch(
        self,
        prompts: Sequence_[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Completion]:
        """Generate completions for several prompts as one static batch: prefill all, decode until all finish.

        Each prompt is its own sequence (a finished one leaves the batch at once); with `seed`,
        sequence i samples with seed + i, so their samples differ but the run is reproducible.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence_) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        seqs = [self.new_sequence(p, GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                      seed=None if seed is None else seed + i))
                for i, p in enumerate(prompts)]
        return self.run_to_completion(seqs)

    def run_to_completion(self, seqs: list[Sequence]) -> list[Completion]:
        """Prefill `seqs` together, then decode until every one has finished."""
        batch = self.new_batch()
        try:
            batch.prefill(seqs)
            while batch.running:
                batch.decode()
        finally:
            batch.release(batch.running)
        return [s.completion() for s in seqs]

    @abstractmethod
    def count_tokens(self, prompt: str) -> int:
        """Prompt length in tokens, as the model will see it (chat template included)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """name, parameters, dtype, device, memory_bytes (and whatever else is useful)."""

    @abstractmethod
    def _new_sequence(self, prompt: str, params: GenerationParams, on_token: TokenCallback | None,
                      chat_template: bool = True) -> Sequence: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


@dataclass(frozen=True)
class StepInfo:
    """What one model step did: when it began, how long it took, and how many tokens of each kind."""

    t: float
    duration_s: float
    batch_size: int  # sequences this step ran
    prefill_tokens: int
    decode_tokens: int
    kv_tokens: int = 0  # slots held in the KV cache after the step, padding included
    pad_tokens: int = 0  # of which padding
    kv_blocks: int = 0  # KV blocks in use after the step (a paged cache; 0 otherwise)


class RunningBatch(ABC):
    """Sequences that a model is running now, and their KV state: what continuous batching needs.

    `prefill` adds sequences (each produces its first token), `decode` produces one token for each
    running sequence (or a subset), and a sequence that finishes leaves the batch at once, freeing
    its state. Every call holds the model's lock for one step. Not thread-safe itself: one owner.
    """

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self.running: list[Sequence] = []

    #: Whether one forward pass can prefill some sequences and decode others (`_mixed`).
    mixes_steps = False

    def prefill(self, seqs: list[Sequence]) -> StepInfo:
        """Run the prompts of `seqs` (new sequences); each gets its first token."""
        self._check_new(seqs)
        with self.model._lock:
            t0 = time.perf_counter()
            for s in seqs:
                s.started = t0
            tokens = self._prefill(seqs)
            return self._done(t0, len(seqs), tokens, 0)

    def decode(self, seqs: list[Sequence] | None = None) -> StepInfo:
        """One token for each of `seqs` (default: every running sequence)."""
        todo = self._check_running(seqs)
        with self.model._lock:
            t0 = time.perf_counter()
            self._decode(todo)
            return self._done(t0, len(todo), 0, len(todo))

    def mixed(self, prefill: list[Sequence], decode: list[Sequence]) -> StepInfo:
        """Prefill `prefill` and decode `decode` (running sequences) in one forward pass: a step is
        {sequence: tokens}, as in vLLM v1. Only where `mixes_steps` (the paged cache)."""
        if not self.mixes_steps:
            raise NotImplementedError(f"{type(self).__name__} runs a prefill and a decode as two steps")
        self._check_new(prefill)
        todo = self._check_running(decode)
        with self.model._lock:
            t0 = time.perf_counter()
            for s in prefill:
                s.started = t0
            tokens = self._mixed(prefill, todo)
            return self._done(t0, len(prefill) + len(todo), tokens, len(todo))

    def _check_new(self, seqs: list[Sequence]) -> None:
        if not seqs:
            raise ValueError("prefill() needs at least one sequence")
        for s in seqs:
            if s.started is not None:
                raise ValueError(f"{s!r} was already started")

    def _check_running(self, seqs: list[Sequence] | None) -> list[Sequence]:
        todo = list(self.running) if seqs is None else seqs
        if not todo:
            raise ValueError("decode() with no running sequences")
        if seqs is not None and len(seqs) != len(self.running):
            running = set(map(id, self.running))
            if any(id(s) not in running for s in todo):
                raise ValueError("decode() of a sequence that is not running in this batch")
        return todo

    def _mixed(self, prefill: list[Sequence], decode: list[Sequence]) -> int:
        """One forward pass over both; return prompt tokens run (only where `mixes_steps`)."""
        raise NotImplementedError

    def release(self, seqs: list[Sequence]) -> None:
        """Drop sequences (finished or abandoned) and their KV state. Idempotent."""
        gone = set(map(id, seqs))
        keep = [i for i, s in enumerate(self.running) if id(s) not in gone]
        if len(keep) != len(self.running):
            self._keep(keep)
            self.running = [self.running[i] for i in keep]

    def _done(self, t0: float, batch_size: int, prefill_tokens: int, decode_tokens: int) -> StepInfo:
        finished = [s for s in self.running if s.finish_reason is not None]
        if finished:
            self.release(finished)
        kv, pad = self.kv_tokens()
        return StepInfo(t0, time.perf_counter() - t0, batch_size, prefill_tokens, decode_tokens, kv, pad,
                        self.kv_blocks()[0])

    def kv_tokens(self) -> tuple[int, int]:
        """(slots held in the KV cache, of which padding); (0, 0) for a model without one."""
        return 0, 0

    def kv_bytes(self) -> int:
        """Bytes the KV cache holds now."""
        return 0

    def kv_blocks(self) -> tuple[int, int]:
        """(KV blocks in use, the budget in blocks); (0, 0) for a cache that is not paged."""
        return 0, 0

    def kv_usage(self) -> KVUsage | None:
        """The paged cache's blocks now (None if the cache is not paged). Read from other threads."""
        return None

    @abstractmethod
    def _prefill(self, seqs: list[Sequence]) -> int:
        """Run the prompts, append each first token, add `seqs` to `running`; return prompt tokens run."""

    @abstractmethod
    def _decode(self, seqs: list[Sequence]) -> None:
        """Append one token to each of `seqs`."""

    @abstractmethod
    def _keep(self, indices: list[int]) -> None:
        """Keep only the KV state of running[i] for i in `indices` (in that order)."""
