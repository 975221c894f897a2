"""`TransformersModel`: a Hugging Face causal LM behind the `LanguageModel` interface, and its loaders."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from queuelab.generation import GenerationParams
from queuelab.models import embedded
from queuelab.models.base import EMBEDDED, TINY, LanguageModel, RunningBatch
from queuelab.sequence import Sequence, TokenCallback


class TransformersModel(LanguageModel):
    """A transformers causal LM and its tokenizer. Instruct models get their chat template applied."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, load_info: dict[str, Any] | None = None) -> None:
        super().__init__()
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
        return _KVBatch(self)

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


class _KVBatch(RunningBatch):
    """Running sequences in one left-padded KV cache that rows join and leave between steps.

    Row i of the cache holds sequence running[i]; `mask` marks its real slots (1) against padding (0),
    and `pos` is the position its next token takes. A joining sequence is prefilled alone, in a
    cache of its own (so the running rows are untouched and its numbers match a batch of one), then
    its rows are left-padded to the batch's width and concatenated. A leaving sequence's row is
    dropped, and columns that became padding in every row are trimmed from the left.

    Explicit position ids matter: without them Llama takes positions from the cache length, which
    counts padding columns, and silently produces wrong tokens.
    """

    def __init__(self, model: TransformersModel) -> None:
        super().__init__(model)
        self.m = model
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=model.device)  # (B, W)
        self.pos = torch.zeros(0, dtype=torch.long, device=model.device)  # (B,)
        self.last = torch.zeros(0, dtype=torch.long, device=model.device)  # (B,) the input of the next decode

    # -- steps ----------------------------------------------------------------------------------
    def _prefill(self, seqs: list[Sequence]) -> int:
        caches, firsts = [], []
        with torch.inference_mode():
            for s in seqs:
                ids = torch.tensor([s.prompt_ids], device=self.m.device)  # (1, L)
                cache = DynamicCache(config=self.m.model.config)
                out = self.m.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
                s.rng = self._rng(s)
                firsts.append(self._pick([s], out.logits[:, -1, :])[0])
                caches.append(cache)
        self._join(seqs, caches)
        self._append(seqs, firsts)
        return sum(s.prompt_tokens for s in seqs)

    def _decode(self, seqs: list[Sequence]) -> None:
        active = self._rows(seqs)  # (B,) bool
        ids = torch.where(active, self.last, self.m.pad_id).unsqueeze(1)  # (B, 1)
        # A row that sits this step out gets a masked column, so the cache stays rectangular.
        self.mask = torch.cat([self.mask, active.long().unsqueeze(1)], dim=1)
        with torch.inference_mode():
            out = self.m.model(input_ids=ids, attention_mask=self.mask, position_ids=self.pos.unsqueeze(1),
                               cache=self.cache, use_cache=True)
        logits = out.logits[:, -1, :]  # (B, V)
        rows = active.nonzero().squeeze(1).tolist()
        ordered = [self.running[i] for i in rows]  # the caller's order need not be the rows' order
        self.pos = self.pos + active.long()
        self._append(ordered, self._pick(ordered, logits[rows]), rows=rows)

    def _keep(self, indices: list[int]) -> None:
        if not indices:
            self.cache, self.mask = None, self.mask[:0, :0]
            self.pos, self.last = self.pos[:0], self.last[:0]
            return
        keep = torch.tensor(indices, device=self.m.device)
        self.mask, self.pos, self.last = self.mask[keep], self.pos[keep], self.last[keep]
        # Columns that are padding in every remaining row (a long sequence left) are dropped.
        lead = int(self.mask.any(dim=0).long().argmax())
        self.mask = self.mask[:, lead:]
        assert self.cache is not None
        for i, layer in enumerate(_layers(self.cache)):  # (B, heads, W, head_dim)
            self.cache.layers[i] = _KVLayer(layer.keys[keep, :, lead:], layer.values[keep, :, lead:])

    # -- helpers --------------------------------------------------------------------------------
    def _join(self, seqs: list[Sequence], caches: list[DynamicCache]) -> None:
        lengths = [s.prompt_tokens for s in seqs]
        width = max([self.mask.shape[1], *lengths])
        parts_mask = [_left_pad(self.mask, width, dim=1)] + [
            _left_pad(torch.ones((1, n), dtype=torch.long, device=self.m.device), width, dim=1) for n in lengths]
        self.mask = torch.cat(parts_mask, dim=0)
        self.pos = torch.cat([self.pos, torch.tensor(lengths, device=self.m.device)])
        self.last = torch.cat([self.last, torch.zeros(len(seqs), dtype=torch.long, device=self.m.device)])
        sources = ([self.cache] if self.cache is not None else []) + caches
        cache = sources[0]
        for i in range(len(cache.layers)):  # (B, heads, W, head_dim) per layer
            cache.layers[i] = _KVLayer(torch.cat([_left_pad(_layers(c)[i].keys, width, 2) for c in sources]),
                                       torch.cat([_left_pad(_layers(c)[i].values, width, 2) for c in sources]))
        self.cache = cache
        self.running.extend(seqs)

    def _rows(self, seqs: list[Sequence]) -> torch.Tensor:
        if len(seqs) == len(self.running):
            return torch.ones(len(self.running), dtype=torch.bool, device=self.m.device)
        wanted = set(map(id, seqs))
        return torch.tensor([id(s) in wanted for s in self.running], device=self.m.device)

    def _rng(self, s: Sequence) -> torch.Generator | None:
        if s.params.temperature <= 0:
            return None
        g = torch.Generator(device=self.m.device)
        # An unseeded request still samples from its own generator, seeded from torch's global RNG.
        g.manual_seed(s.params.seed if s.params.seed is not None else int(torch.randint(2**62, ())))
        return g

    def _pick(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """One token per sequence from its row of logits (n, V): greedy, or sampled with its own generator.

        A sequence short of its `min_tokens` cannot end yet: its end-of-sequence logit is masked (as vLLM does).
        """
        early = [i for i, s in enumerate(seqs) if len(s.output_ids) < s.params.min_tokens]
        if early and self.m.eos_id is not None:
            logits = logits.clone()
            logits[early, self.m.eos_id] = float("-inf")
        tokens = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(seqs):
            if s.params.temperature > 0:
                probs = torch.softmax(logits[i].float() / s.params.temperature, dim=-1)
                tokens[i] = int(torch.multinomial(probs, 1, generator=s.rng))
        return tokens

    def _append(self, seqs: list[Sequence], tokens: list[int], rows: list[int] | None = None) -> None:
        now = time.perf_counter()
        if rows is None:
            index = {id(s): i for i, s in enumerate(self.running)}
            rows = [index[id(s)] for s in seqs]
        self.last[rows] = torch.tensor(tokens, device=self.m.device)
        for s, t in zip(seqs, tokens):
            s.append(t, now, eos=t == self.m.eos_id)

    # -- occupancy ------------------------------------------------------------------------------
    def kv_tokens(self) -> tuple[int, int]:
        return int(self.mask.numel()), int((self.mask == 0).sum())

    def kv_bytes(self) -> int:
        if self.cache is None:
            return 0
        # What the buffers hold, spare columns included: that is the memory the cache takes.
        return sum(t.numel() * t.element_size() for layer in _layers(self.cache) for t in (layer._k, layer._v))


class _KVLayer(DynamicLayer):
    """One layer's keys and values in buffers with spare columns.

    transformers' DynamicLayer appends a decode step's column with torch.cat, which copies the whole
    cache on every step; here the column is written in place and a view is returned, and the
    buffer is re-made 32 columns larger when full. (On a 2-core CPU the two measured the same within
    noise — 156 vs 153 ms per step at batch 16 — the copy matters more where compute is fast.)
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self._fill(keys, values)

    def _fill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        b, h, w, d = keys.shape
        spare = 32  # a copy every 32 steps instead of every step, for 32 columns of memory
        self._k = keys.new_empty((b, h, w + spare, d))
        self._v = values.new_empty((b, h, w + spare, d))
        self._k[:, :, :w], self._v[:, :, :w] = keys, values
        self.length = w
        self.keys, self.values = self._k[:, :, :w], self._v[:, :, :w]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.length + n > self._k.shape[2]:
            assert self.keys is not None and self.values is not None
            self._fill(self.keys, self.values)
        end = self.length + n
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers: attention layers with .keys and .values (B, heads, W, head_dim) for the models we load."""
    return list(cache.layers)


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad `x` on the left along `dim` to `width`."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


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
