"""The paged KV cache: every layer's keys and values in one pool of fixed-size blocks, read through
each sequence's block table, so a batch is ragged and holds no padding (PagedAttention, in plain
PyTorch).

A step packs the new tokens of every sequence it runs into one row — a whole prompt for a joining
sequence, one token for a decoding one — so the linear layers and the MLP run on real tokens only.
Attention goes through transformers' attention registry: `paged_attention` writes the step's keys
and values into the pool at their slots, gathers each sequence's context back into a dense tensor
and runs one SDPA call over the batch, queries padded to the longest in the step and masked.
Gathering costs one copy of the context per layer (8 % of a decode step at batch 32 on a 2-core
CPU), and in exchange the batch's attention is one call to SDPA's fused kernel rather than one small
matmul per block in Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from queuelab.models.base import RunningBatch
from queuelab.models.block_manager import BlockAccounting, BlockManager
from queuelab.models.sampling import generator_for, pick_tokens
from queuelab.sequence import Sequence

if TYPE_CHECKING:
    from queuelab.models.transformers_model import TransformersModel

#: The attention implementation a TransformersModel runs with: SDPA for the padded cache, and the
#: paged path below when a step hands it a `paged` plan.
ATTENTION = "queuelab"


@dataclass
class StepPlan:
    """Where one step's tokens go and what each attends to; built once per step, read by every layer."""

    pool: KVPool
    write_slots: torch.Tensor  # (T,) the pool slot of each new token, in packed order
    read_slots: torch.Tensor  # (B * L,) each sequence's context, padded to the longest (L)
    mask: torch.Tensor | None  # (B, 1, Q, L) bool: query i of sequence b may see key j; None: all of them
    q_index: torch.Tensor | None  # (T,) where each packed query sits in the (B * Q) padded layout; None: Q == 1
    batch: int
    queries: int  # Q, the most new tokens of one sequence in this step
    context: int  # L, the longest context


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    paged: StepPlan | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over the paged pool when the step carries a plan; SDPA (the padded cache's) otherwise."""
    if paged is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    p, layer = paged, int(module.layer_idx)  # type: ignore[arg-type]  # set on every decoder layer's attention
    k_pool, v_pool = p.pool.keys[layer], p.pool.values[layer]  # (slots, kv_heads, head_dim)
    k_pool.index_copy_(0, p.write_slots, key[0].transpose(0, 1))  # key: (1, kv_heads, T, head_dim)
    v_pool.index_copy_(0, p.write_slots, value[0].transpose(0, 1))
    kv_heads, head_dim = k_pool.shape[1], k_pool.shape[2]
    k = k_pool.index_select(0, p.read_slots).view(p.batch, p.context, kv_heads, head_dim).transpose(1, 2)
    v = v_pool.index_select(0, p.read_slots).view(p.batch, p.context, kv_heads, head_dim).transpose(1, 2)
    q = query[0].transpose(0, 1)  # (T, heads, head_dim)
    heads = q.shape[1]
    if p.queries == 1:
        # Decode only: the query heads that share a key head become rows of one (B, kv_heads, group)
        # query, so SDPA reads each key once, without repeating keys or a GQA kernel (faster on a CPU).
        q = q.reshape(p.batch, kv_heads, heads // kv_heads, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, scale=scaling)
        return out.reshape(1, p.batch, heads, head_dim), None  # (1, T, heads, head_dim), as the model expects
    assert p.q_index is not None  # made for every step with a prefill
    q = q.new_zeros((p.batch * p.queries, heads, head_dim)).index_copy_(0, p.q_index, q)  # padded to (B, Q)
    q = q.view(p.batch, p.queries, heads, head_dim).transpose(1, 2)  # (B, heads, Q, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, scale=scaling, enable_gqa=kv_heads != heads)
    out = out.transpose(1, 2).reshape(p.batch * p.queries, heads, head_dim).index_select(0, p.q_index)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTENTION, paged_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the padded cache still gets SDPA's masks


class KVPool:
    """The pool's tensors: per layer, keys and values of shape (slots, kv_heads, head_dim).

    Allocated as blocks are first used and grown by half again when a higher block is needed, so a
    large budget costs memory only once it is used (the block manager hands out low blocks first).
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, block_size: int, *, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.block_size = block_size
        shape = (0, kv_heads, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    def ensure(self, blocks: int) -> None:
        """Room for block ids below `blocks`."""
        need = blocks * self.block_size
        if need <= self.slots:
            return
        size = max(need, self.slots * 3 // 2)
        for tensors in (self.keys, self.values):
            for i, t in enumerate(tensors):
                grown = t.new_zeros((size, *t.shape[1:]))
                grown[: t.shape[0]] = t
                tensors[i] = grown

    def bytes_per_slot(self) -> int:
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[1] * k.shape[2] * k.element_size()


class PagedKVBatch(BlockAccounting, RunningBatch):
    """Running sequences of a transformers model over a paged KV cache of `model.kv_blocks` blocks."""

    def __init__(self, model: TransformersModel) -> None:
        super().__init__(model)
        self.m = model
        cfg = model.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.blocks = BlockManager(model.kv_blocks, model.block_size)
        self.pool = KVPool(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, model.block_size,
                           dtype=model.model.dtype, device=model.device)

    # -- steps ----------------------------------------------------------------------------------
    mixes_steps = True

    def _prefill(self, seqs: list[Sequence]) -> int:
        return self._mixed(seqs, [])

    def _decode(self, seqs: list[Sequence]) -> None:
        self._mixed([], seqs)

    def _mixed(self, prefill: list[Sequence], decode: list[Sequence]) -> int:
        """Joining sequences' whole prompts and running ones' last tokens, in one packed forward pass."""
        self.blocks.reserve_all([(s, s.prompt_tokens) for s in prefill] + [(s, 1) for s in decode])
        self.pool.ensure(self.blocks.high)
        for s in prefill:
            s.rng = generator_for(s.params, self.m.device)
        self.running.extend(prefill)
        work = [(s, list(s.prompt_ids or ())) for s in prefill] + [(s, [s.output_ids[-1]]) for s in decode]
        self._append([s for s, _ in work], self._forward(work))
        return sum(s.prompt_tokens for s in prefill)

    def _keep(self, indices: list[int]) -> None:
        kept = {id(self.running[i]) for i in indices}
        for s in self.running:
            if id(s) not in kept:
                self.blocks.free_owner(s)

    # -- helpers --------------------------------------------------------------------------------
    def _forward(self, work: list[tuple[Sequence, list[int]]]) -> list[int]:
        """Run each sequence's new tokens in one packed forward pass; return each one's next token."""
        plan, ids, positions, last = self._plan(work)
        with torch.inference_mode():
            out = self.m.model(input_ids=ids, position_ids=positions, attention_mask=_NO_MASK, use_cache=False,
                               logits_to_keep=last, paged=plan)
        seqs = [s for s, _ in work]
        return pick_tokens(seqs, out.logits[0], self.m.eos_id)

    def _plan(self, work: list[tuple[Sequence, list[int]]]) -> tuple[StepPlan, torch.Tensor, torch.Tensor, torch.Tensor]:
        dev, size = self.m.device, self.blocks.block_size
        # Blocks were reserved for the new tokens already: what is in the pool is everything before them.
        starts = [self.blocks.tokens(s) - len(new) for s, new in work]
        counts = [len(new) for _, new in work]
        ends = [a + n for a, n in zip(starts, counts)]
        batch, queries, context = len(work), max(counts), max(ends)
        ids = torch.tensor([[t for _, new in work for t in new]], device=dev)
        positions = torch.tensor([[p for a, n in zip(starts, counts) for p in range(a, a + n)]], device=dev)
        tables = [self.blocks.tables[s] for s, _ in work]
        width = max(map(len, tables))
        table = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)  # (B, blocks)
        key_pos = torch.arange(context, device=dev)  # (L,)
        read = table[:, key_pos // size] * size + key_pos % size  # (B, L); past a context: some valid slot, masked
        write = read[torch.repeat_interleave(torch.arange(batch, device=dev), torch.tensor(counts, device=dev)),
                     positions[0]]
        end = torch.tensor(ends, device=dev)
        query_pos = (end - torch.tensor(counts, device=dev)).unsqueeze(1) + torch.arange(queries, device=dev)
        query_pos = torch.minimum(query_pos, (end - 1).unsqueeze(1))  # padding queries repeat the last: no empty row
        mask: torch.Tensor | None = None
        if queries > 1 or min(ends) < context:  # one token each over equal contexts: every key is visible
            mask = (key_pos.view(1, 1, -1) <= query_pos.unsqueeze(2)).unsqueeze(1)  # (B, 1, Q, L), causal per sequence
        q_index = None
        if queries > 1:
            q_index = torch.tensor([b * queries + i for b, n in enumerate(counts) for i in range(n)], device=dev)
        last = torch.tensor(counts, device=dev).cumsum(0) - 1  # each sequence's last new token: its logits
        plan = StepPlan(self.pool, write, read.reshape(-1), mask, q_index, batch, queries, context)
        return plan, ids, positions, last

    def _append(self, seqs: list[Sequence], tokens: list[int]) -> None:
        now = time.perf_counter()
        for s, t in zip(seqs, tokens):
            s.append(t, now, eos=t == self.m.eos_id)

    # -- occupancy (kv_tokens, kv_blocks, kv_usage: BlockAccounting) -----------------------------
    def kv_bytes(self) -> int:
        return self.blocks.used * self.blocks.block_size * self.pool.bytes_per_slot()


# A 4D placeholder: transformers returns a prepared 4D mask as it is, so no (T x T) mask is built for
# a step whose attention reads its own plan.
_NO_MASK = torch.zeros((1, 1, 0, 0), dtype=torch.bool)
