"""The prompt set for load tests, and seeded sampling from it.

The file ships inside the package (`queuelab/data/prompts.jsonl`, read with importlib.resources, so
an installed wheel has it); `data/prompts.jsonl` at the top of a checkout is a link to it, where
learners look — one file, not two copies that drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from queuelab.checks import positive_int

PROMPTS_FILE = resources.files("queuelab") / "data" / "prompts.jsonl"
OUTPUT_CLASSES = ("short", "medium", "long")  # expected answer length


@lru_cache(maxsize=1)
def load_prompts(path: Any = PROMPTS_FILE) -> tuple[dict[str, Any], ...]:
    """Every record: id, kind (question, instruction, creative, code, summary), output class, prompt."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise FileNotFoundError(f"prompt set not found at {path}: reinstall queuelab, or pass prompts=[...]")
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def choose(n: int, prompts: Sequence[str] | None, rng: np.random.Generator) -> list[str]:
    """n prompts: sampled with `rng` from the prompt set, or taken in order (cycling) from a given list."""
    if prompts is None:
        pool = [p["prompt"] for p in load_prompts()]
        return [pool[i] for i in rng.integers(0, len(pool), size=n)]
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings (or None for the built-in prompt set)")
    return [prompts[i % len(prompts)] for i in range(n)]


def choose_caps(max_new_tokens: int | Sequence[int], n: int, seed: int) -> list[int]:
    """Each of n requests' max_new_tokens: one value for all, or drawn (seeded) from a list such as
    [16, 16, 16, 128] — a workload of mostly short answers and some long ones."""
    if isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool):
        return [max_new_tokens] * n
    if isinstance(max_new_tokens, str | bytes) or not isinstance(max_new_tokens, Sequence) or not max_new_tokens:
        raise ValueError(f"max_new_tokens must be an int or a non-empty list of ints, got {max_new_tokens!r}")
    choices = [positive_int("max_new_tokens", c) for c in max_new_tokens]
    rng = np.random.default_rng([seed, 2])  # its own stream: the caps do not shift the prompts or arrivals
    return [choices[i] for i in rng.integers(0, len(choices), size=n)]
