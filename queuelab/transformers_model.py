"""`TransformersModel`: a Hugging Face causal LM behind the `LanguageModel` interface, and its loaders."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from . import embedded
from .generation import Completion, GenerationParams
from .model import EMBEDDED, TINY, LanguageModel, TokenCallback


class TransformersModel(LanguageModel):
    """A transformers causal LM and its tokenizer. Instruct models get their chat template applied."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, load_info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.load_info = load_info or {}

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return list(
                self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
        return list(self.tokenizer(prompt)["input_ids"])

    def count_tokens(self, prompt: str) -> int:
        return len(self.encode(prompt))

    # -- generation -----------------------------------------------------------------------------
    def _config(self, params: GenerationParams) -> GenerationConfig:
        sample = params.temperature > 0
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            # Pure temperature sampling: no hidden top-k/top-p that a learner did not ask for.
            temperature=params.temperature if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, params: GenerationParams, streamer: Any) -> tuple[torch.Tensor, float, float]:
        """Run generate; return (new token ids, ttft_s, duration_s) measured around it."""
        clock = _FirstTokenClock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if params.temperature > 0 and params.seed is not None:
                torch.manual_seed(params.seed)  # under the model lock, so runs are reproducible
            out = self.model.generate(
                input_ids=ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                generation_config=self._config(params),
                stopping_criteria=StoppingCriteriaList([clock]),
                streamer=streamer,
            )
        t1 = time.perf_counter()
        first = clock.first if clock.first is not None else t1
        return out[:, ids.shape[1]:].cpu(), first - t0, t1 - t0

    def _finish(self, new_ids: list[int], prompt_tokens: int, ttft: float, duration: float) -> Completion:
        # A sequence ends at its own first EOS (inclusive: producing it cost a forward pass);
        # what follows in a batch is padding.
        if self.eos_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.eos_id) + 1]
            reason = "stop"
        else:
            reason = "length"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return Completion(text, prompt_tokens, len(new_ids), ttft, duration, reason)

    def _generate(self, prompt: str, params: GenerationParams, on_token: TokenCallback | None) -> Completion:
        ids = self.encode(prompt)
        x = torch.tensor([ids])
        streamer = _TextStreamer(self.tokenizer, on_token, self.eos_id) if on_token else None
        new, ttft, duration = self._run(x, torch.ones_like(x), params, streamer)
        return self._finish(new[0].tolist(), len(ids), ttft, duration)

    def _generate_batch(self, prompts: list[str], params: GenerationParams) -> list[Completion]:
        encoded = [self.encode(p) for p in prompts]
        width = max(map(len, encoded))
        # Left padding: every sequence's last prompt token sits in the same column, where decoding starts.
        ids = torch.tensor([[self.pad_id] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        new, ttft, duration = self._run(ids, mask, params, None)
        return [self._finish(row.tolist(), len(e), ttft, duration) for row, e in zip(new, encoded)]

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
            **self.load_info,
        }


class _FirstTokenClock(StoppingCriteria):
    """Never stops generation; records when the first new token exists (called after each step)."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.first is None:
            self.first = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _TextStreamer(BaseStreamer):
    """Hands each new piece of decoded text to a callback, holding back incomplete UTF-8."""

    def __init__(self, tokenizer: Any, on_token: TokenCallback, eos_id: int | None) -> None:
        self.tokenizer, self.on_token, self.eos_id = tokenizer, on_token, eos_id
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands the prompt over first
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist() if t != self.eos_id)
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # a multi-byte character is still arriving
            return
        if len(text) > self.sent:
            piece, self.sent = text[self.sent:], len(text)
            self.on_token(piece)


# -- loaders ------------------------------------------------------------------------------------
def load_transformers_model(name: str, *, device: str, dtype: Any) -> TransformersModel:
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
    return TransformersModel(model, tok, name=name, load_info=info)


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
    return model.to(dtype), tok


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
