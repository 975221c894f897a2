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
