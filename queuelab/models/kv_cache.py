"""The left-padded KV cache: the running sequences of a transformers model in one rectangular cache
whose rows join and leave between steps (`PaddedKVBatch`), and its growable layer (`_KVLayer`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from queuelab.models.base import RunningBatch
from queuelab.models.sampling import generator_for, pick_tokens
from queuelab.sequence import Sequence

if TYPE_CHECKING:
    from queuelab.models.transformers_model import TransformersModel


class PaddedKVBatch(RunningBatch):
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
                s.rng = generator_for(s.params, self.m.device)
                firsts.append(pick_tokens([s], out.logits[:, -1, :], self.m.eos_id)[0])
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
        self._append(ordered, pick_tokens(ordered, logits[rows], self.m.eos_id), rows=rows)

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
    buffer is re-made 32 columns larger when full. (On a 2-core CPU the two cost the same within
    noise; the copy matters more where compute is fast.)
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
