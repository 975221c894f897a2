"""`TransformersModel`: a Hugging Face causal LM behind the `LanguageModel` interface, and its loaders."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from queuelab.checks import positive_int
from queuelab.generation import GenerationParams
from queuelab.models import embedded
from queuelab.models.base import EMBEDDED, TINY, LanguageModel, RunningBatch
from queuelab.models.kv_cache import PaddedKVBatch
from queuelab.models.paged_kv_cache import ATTENTION, PagedKVBatch
from queuelab.sequence import Sequence, TokenCallback

KV_CACHES = ("paged", "padded")
#: The default KV budget: 4,096 blocks of 16 tokens (65,536 tokens; for SmolLM2-135M in fp32, 3 GB if
#: all were used). The pool is allocated as blocks are used, so a budget this size costs nothing idle.
DEFAULT_KV_BLOCKS = 4096


class TransformersModel(LanguageModel):
    """A transformers causal LM and its tokenizer. Instruct models get their chat template applied."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, load_info: dict[str, Any] | None = None,
                 kv_cache: str = "paged", kv_blocks: int = DEFAULT_KV_BLOCKS, block_size: int = 16) -> None:
        super().__init__()
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {', '.join(map(repr, KV_CACHES))}, got {kv_cache!r}")
        #: "paged" (blocks from one pool, no padding) or "padded" (one left-padded tensor).
        self.kv_cache = kv_cache
        self.kv_blocks = positive_int("kv_blocks", kv_blocks)
        self.block_size = positive_int("block_size", block_size)
        # One attention function serves both caches: SDPA for the padded one, the paged path when
        # a step carries a plan (see paged_kv_cache).
        model.config._attn_implementation = ATTENTION
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.device = model.device
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.load_info = load_info or {}

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, prompt: str, chat_template: bool = True) -> list[int]:
        """Token ids: as a user's chat message if the model has a chat template (and `chat_template`), else as is."""
        if chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return list(
                self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
        return list(self.tokenizer(prompt)["input_ids"])

    def count_tokens(self, prompt: str) -> int:
        return len(self.encode(prompt))

    def _new_sequence(self, prompt: str, params: GenerationParams, on_token: TokenCallback | None,
                      chat_template: bool = True) -> Sequence:
        ids = self.encode(prompt, chat_template)
        if not ids:
            raise ValueError("prompt has no tokens")
        return Sequence(prompt, params, prompt_ids=ids, on_token=on_token, decoder=self._decode_text)

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def new_batch(self) -> RunningBatch:
        return PagedKVBatch(self) if self.kv_cache == "paged" else PaddedKVBatch(self)

    # -- description ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        memory = sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))
        return {
            "name": self.name,
            "parameters": params,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "memory_bytes": memory,
            "max_context": self.max_context,
            "kv_cache": self.kv_cache,
            "kv_blocks": self.kv_blocks,
            "block_size": self.block_size,
            **self.load_info,
        }


# -- loaders ------------------------------------------------------------------------------------
def load_transformers_model(name: str, *, device: str, dtype: Any, **options: Any) -> TransformersModel:
    t0 = time.perf_counter()
    torch_dtype = _resolve_dtype(dtype, device)
    with embedded.quiet_transformers():
        if name == EMBEDDED:
            cached = embedded.model_dir()
            model, tok = _from_dir(cached.path, torch_dtype)
            info = {"source": str(embedded.gguf_path().name), "converted": cached.built}
        elif name == TINY:
            model, tok = _tiny_random(torch_dtype)
            info = {"source": "random init, seed 0"}
        else:
            model, tok = _from_anywhere(name, torch_dtype)
            info = {"source": name}
    model.to(device)
    info["load_s"] = round(time.perf_counter() - t0, 3)
    return TransformersModel(model, tok, name=name, load_info=info, **options)


def _resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    if dtype is None:
        # fp32 on CPU: bf16 matmuls are slower than fp32 on most laptop CPUs.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'float32', 'bfloat16' or 'float16'")
    return resolved


def _from_dir(path: Path | str, dtype: torch.dtype, **kw: Any) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    return model, tok


def _tiny_random(dtype: torch.dtype) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(embedded.tokenizer_dir().path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return cast(Any, model).to(dtype), tok


def _from_anywhere(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    if Path(name).expanduser().is_dir():
        return _from_dir(Path(name).expanduser(), dtype)
    try:
        return _from_dir(name, dtype, local_files_only=True)
    except OSError:
        pass
    if not _hub_reachable():
        raise ValueError(
            f"model {name!r} is not a local directory, not in the local Hugging Face cache, and no "
            f"model hub can be reached from this machine. Use the embedded default, which works "
            f"offline: ql.load_model() (= {EMBEDDED!r}), or {TINY!r} for tests."
        ) from None
    try:
        return _from_dir(name, dtype)
    except OSError as e:
        raise ValueError(f"could not load model {name!r}: {e}".splitlines()[0]) from None


def _hub_reachable(timeout: float = 2.0) -> bool:
    """A quick TCP check, so an offline machine gets a clear error at once instead of minutes of retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
