"""The block manager's bookkeeping: blocks are conserved, tables address distinct slots, nothing leaks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuelab.models.block_manager import BlockManager, OutOfBlocks


def test_allocate_append_free_and_the_slots_of_a_table():
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.allocate("a", 5) == [0, 1]  # 5 tokens: two blocks, the second holding one
    assert bm.last_block_fill("a") == 0.25
    assert bm.slots("a", 3, 6) == [3, 4, 5]
    bm.append("a", 3)  # 8 tokens: the second block fills, no new one
    assert bm.tables["a"] == [0, 1] and bm.last_block_fill("a") == 1.0
    bm.append("a")  # the ninth token needs a third block
    assert bm.tables["a"] == [0, 1, 2] and bm.free == 1
    bm.free_owner("a")
    assert (bm.free, bm.used, bm.tables) == (4, 0, {})
    bm.free_owner("a")  # idempotent


def test_out_of_blocks_is_refused_and_leaves_the_pool_as_it_was():
    bm = BlockManager(num_blocks=2, block_size=4)
    bm.allocate("a", 8)
    with pytest.raises(OutOfBlocks, match="1 KV blocks needed, 0 free of 2"):
        bm.allocate("b", 1)
    with pytest.raises(OutOfBlocks):
        bm.append("a")
    assert bm.tokens("a") == 8 and bm.tables["a"] == [0, 1] and "b" not in bm.tables


def test_a_shared_block_stays_until_its_last_holder_lets_go():
    bm = BlockManager(num_blocks=3, block_size=2)
    bm.allocate("a", 4)
    bm.share("b", bm.tables["a"][:1], tokens=2)
    bm.append("b", 1)  # b's own block after the shared one
    assert bm.blocks[0].ref_count == 2 and bm.free == 0
    bm.free_owner("a")
    assert bm.free == 1 and bm.blocks[0].ref_count == 1  # block 1 came back, block 0 is still b's
    bm.free_owner("b")
    assert bm.free == 3
    with pytest.raises(ValueError, match="only held blocks can be shared"):
        bm.share("c", [0], tokens=2)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="num_blocks must be an int >= 1"):
        BlockManager(0)
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        BlockManager(4, block_size=True)


@settings(max_examples=200, deadline=None)
@given(block_size=st.integers(1, 8), num_blocks=st.integers(1, 24),
       ops=st.lists(st.tuples(st.sampled_from(["allocate", "append", "free"]), st.integers(0, 5),
                              st.integers(1, 20)), max_size=60))
def test_blocks_are_conserved_and_no_slot_is_held_twice(block_size, num_blocks, ops):
    bm = BlockManager(num_blocks, block_size)
    for op, owner, tokens in ops:
        try:
            if op == "allocate" and owner not in bm.tables:
                bm.allocate(owner, tokens)
            elif op == "append" and owner in bm.tables:
                bm.append(owner, tokens)
            elif op == "free":
                bm.free_owner(owner)
        except OutOfBlocks:
            pass
        held = [b for table in bm.tables.values() for b in table]
        assert len(held) == len(set(held)) == bm.used  # no block in two tables (nothing shared here)
        assert bm.used + bm.free == num_blocks
        for o, table in bm.tables.items():
            assert len(table) == bm.blocks_for(bm.tokens(o))  # exactly the blocks its tokens need
            slots = bm.slots(o, 0, bm.tokens(o))
            assert len(set(slots)) == len(slots) and all(s // block_size in table for s in slots)


def test_the_lowest_free_block_goes_out_first():
    # So a pool grown to the highest block in use stays as small as the peak use.
    bm = BlockManager(num_blocks=6, block_size=1)
    for owner in "abc":
        bm.allocate(owner, 2)
    bm.free_owner("a")
    bm.free_owner("b")
    assert bm.allocate("d", 3) == [0, 1, 2]
