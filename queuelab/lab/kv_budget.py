"""The KV cache's memory: what one token of context costs, what a left-padded batch holds, and the
largest batch that fits an allowance.

Every running sequence keeps, for each token of its context, a key and a value vector per layer and
per KV head. In a left-padded batch (queuelab's `RunningBatch` on a transformers model) every row is
as wide as the longest, so a batch of mixed prompt lengths holds padding slots that cost the same memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from queuelab.checks import positive_int
from queuelab.models.base import LanguageModel


def bytes_per_token(model: LanguageModel) -> int:
    """KV-cache bytes per token of context: 2 (key and value) × layers × KV heads × head size × bytes
    per number, read from the model's configuration. Raises ValueError for a model with no KV cache."""
    net: Any = getattr(model, "model", None)
    config = getattr(net, "config", None)
    if config is None:
        raise ValueError(f"{model.name!r} has no transformer configuration, so no KV cache to size")
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)  # fewer than heads: grouped-query attention
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    element = int(next(net.parameters()).element_size())  # the cache is kept in the weights' dtype
    return 2 * layers * kv_heads * head_dim * element


def padded_slots(prompt_tokens: Sequence[int], decode_steps: int = 0) -> tuple[int, int]:
    """(slots, of which padding) of a left-padded batch of these prompts after `decode_steps` decode
    steps of every row: each step adds one column (the key and value of the token it read), so every
    row is as wide as the longest prompt plus the steps run."""
    if not prompt_tokens:
        raise ValueError("padded_slots needs at least one prompt length")
    if decode_steps < 0 or any(n < 1 for n in prompt_tokens):
        raise ValueError(f"need prompt lengths >= 1 and decode_steps >= 0, got {list(prompt_tokens)!r}, {decode_steps}")
    width = max(prompt_tokens) + decode_steps
    slots = width * len(prompt_tokens)
    return slots, slots - sum(prompt_tokens) - decode_steps * len(prompt_tokens)


def largest_batch(budget_bytes: int, per_token: int, context_tokens: int) -> int:
    """The most sequences whose KV cache fits in `budget_bytes` when each row holds `context_tokens`
    slots (in a left-padded batch, up to the longest prompt plus max_new_tokens). 0 if not even one fits."""
    positive_int("per_token", per_token)
    positive_int("context_tokens", context_tokens)
    if budget_bytes < 0:
        raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes!r}")
    return budget_bytes // (per_token * context_tokens)


def rows_that_fit(budget_bytes: int, per_token: int, contexts: Sequence[int], *, paged: bool,
                  block_size: int = 16, spare: int = 32) -> int:
    """How many of `contexts` (tokens each row may hold: prompt + max_new_tokens), taken in order,
    fit in `budget_bytes` of KV cache.

    Padded: every row is as wide as the longest so far, plus `spare` columns (the padded cache grows
    its buffers that many at a time). Paged: each row holds its own blocks, its context rounded up
    to whole blocks of `block_size`, and nothing else.
    """
    positive_int("per_token", per_token)
    slots = budget_bytes // per_token
    for n in range(1, len(contexts) + 1):
        rows = contexts[:n]
        need = (n * (max(rows) + spare) if not paged
                else sum(-(-c // block_size) * block_size for c in rows))
        if need > slots:
            return n - 1
    return len(contexts)


def padding_fraction(steps: pd.DataFrame) -> float:
    """The share of KV-cache slots that held padding, over the decode steps of a step log
    (`run.steps` or `queue.steps()`): each step's slots weighted equally. NaN if no slot was held."""
    decode = steps[steps.decode_tokens > 0]
    held = float(decode.kv_tokens.sum())
    return float(decode.pad_tokens.sum()) / held if held else float("nan")
