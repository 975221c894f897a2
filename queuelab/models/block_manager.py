"""`BlockManager`: the bookkeeping of a paged KV cache, in plain Python (it never touches a tensor).

The cache is a pool of `num_blocks` blocks of `block_size` token slots each. A sequence holds a
block table, the list of its blocks in order: token i of the sequence lives in slot
`table[i // block_size] * block_size + i % block_size` of the pool. Blocks come from one free list
when a sequence is admitted and one at a time as it grows past its last block; they go back when it
leaves. Nothing is padded: a sequence holds at most `block_size - 1` unused slots, in its last block.

Blocks carry a reference count, so that several sequences can share one (a common prefix); a block
returns to the free list when its last holder lets go.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from queuelab.checks import positive_int
from queuelab.metrics import KVUsage
from queuelab.sequence import Sequence


class OutOfBlocks(RuntimeError):
    """No free block is left for a sequence that needs one (the KV budget is spent)."""


@dataclass
class Block:
    id: int
    ref_count: int = 0


class BlockManager:
    """A pool of KV blocks, a free list, and a block table per sequence (keyed by any hashable owner)."""

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        self.num_blocks = positive_int("num_blocks", num_blocks)
        self.block_size = positive_int("block_size", block_size)
        self.blocks = [Block(i) for i in range(num_blocks)]
        # The free list is a min-heap: the lowest free block goes out first, so the pool's tensors
        # (grown as higher blocks are first used) stay as small as the most blocks ever held at once.
        self._free: list[int] = list(range(num_blocks))
        self.tables: dict[Hashable, list[int]] = {}
        self._tokens: dict[Hashable, int] = {}  # how many slots each owner has filled
        #: One past the highest block ever handed out: how large the pool's tensors must be.
        self.high = 0

    # -- what is free -----------------------------------------------------------------------------
    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` slots."""
        return -(-tokens // self.block_size)

    def can_allocate(self, tokens: int) -> bool:
        return self.blocks_for(tokens) <= len(self._free)

    # -- a sequence's life ---------------------------------------------------------------------------
    def allocate(self, owner: Hashable, tokens: int) -> list[int]:
        """A new block table for `owner`, with room for `tokens` slots."""
        if owner in self.tables:
            raise ValueError(f"{owner!r} already holds blocks")
        need = self.blocks_for(tokens)
        if need > len(self._free):
            raise OutOfBlocks(f"{need} KV blocks needed, {len(self._free)} free of {self.num_blocks}")
        self.tables[owner] = [self._take() for _ in range(need)]
        self._tokens[owner] = tokens
        return self.tables[owner]

    def append(self, owner: Hashable, tokens: int = 1) -> list[int]:
        """Room for `tokens` more slots: new blocks only when the last one fills. Returns the table."""
        table = self.tables[owner]
        filled = self._tokens[owner] + tokens
        need = self.blocks_for(filled) - len(table)
        if need > len(self._free):
            raise OutOfBlocks(f"{need} KV blocks needed, {len(self._free)} free of {self.num_blocks}")
        table.extend(self._take() for _ in range(need))
        self._tokens[owner] = filled
        return table

    def reserve(self, owner: Hashable, tokens: int) -> list[int]:
        """Room for `tokens` more slots of `owner`, allocating its table on first use."""
        return self.append(owner, tokens) if owner in self.tables else self.allocate(owner, tokens)

    def reserve_all(self, wants: Iterable[tuple[Hashable, int]]) -> None:
        """`reserve` for every (owner, tokens) of one step, or for none of them (OutOfBlocks)."""
        wants = list(wants)
        need = sum(self.blocks_for(self._tokens.get(o, 0) + n) - len(self.tables.get(o, ())) for o, n in wants)
        if need > len(self._free):
            raise OutOfBlocks(f"KV cache full: {need} KV blocks needed, {len(self._free)} free of {self.num_blocks} "
                              "(raise kv_blocks)")
        for owner, tokens in wants:
            self.reserve(owner, tokens)

    def free_owner(self, owner: Hashable) -> None:
        """Let go of every block `owner` holds (idempotent); a block shared with others stays theirs."""
        for block_id in reversed(self.tables.pop(owner, [])):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                heapq.heappush(self._free, block_id)
        self._tokens.pop(owner, None)

    def share(self, owner: Hashable, block_ids: list[int], tokens: int) -> None:
        """Start `owner`'s table with blocks another sequence holds (a shared prefix of `tokens` slots)."""
        if owner in self.tables:
            raise ValueError(f"{owner!r} already holds blocks")
        for block_id in block_ids:
            if self.blocks[block_id].ref_count < 1:
                raise ValueError(f"block {block_id} is free: only held blocks can be shared")
            self.blocks[block_id].ref_count += 1
        self.tables[owner] = list(block_ids)
        self._tokens[owner] = tokens

    # -- where tokens live -------------------------------------------------------------------------
    def tokens(self, owner: Hashable) -> int:
        return self._tokens[owner]

    def slots(self, owner: Hashable, start: int, end: int) -> list[int]:
        """Pool slots of the owner's tokens start..end-1."""
        table, size = self.tables[owner], self.block_size
        return [table[i // size] * size + i % size for i in range(start, end)]

    def last_block_fill(self, owner: Hashable) -> float:
        """How full the owner's last block is (0 < fill <= 1; 0 for an owner with no slots)."""
        n = self._tokens.get(owner, 0)
        return 0.0 if n == 0 else ((n - 1) % self.block_size + 1) / self.block_size

    def usage(self, owners: list[Hashable]) -> KVUsage:
        """Blocks in use and the mean fill of `owners`' last blocks. Safe to call from another
        thread: it copies what it reads in single steps."""
        fills = [self.last_block_fill(o) for o in owners]
        return KVUsage(self.num_blocks - len(self._free), self.num_blocks, self.block_size,
                       sum(fills) / len(fills) if fills else 0.0)

    def _take(self) -> int:
        block_id = heapq.heappop(self._free)
        self.blocks[block_id].ref_count = 1
        self.high = max(self.high, block_id + 1)
        return block_id

    def __repr__(self) -> str:
        return f"<BlockManager {self.used}/{self.num_blocks} blocks used, block_size={self.block_size}>"


class BlockAccounting:
    """What a running batch over a `BlockManager` reports (the paged cache, and the simulated model's
    accounting of one): slots held are whole blocks, and none of them is padding."""

    blocks: BlockManager
    running: list[Sequence]

    def kv_tokens(self) -> tuple[int, int]:
        return self.blocks.used * self.blocks.block_size, 0

    def kv_blocks(self) -> tuple[int, int]:
        return self.blocks.used, self.blocks.num_blocks

    def kv_usage(self) -> KVUsage:
        return self.blocks.usage(list(self.running))
