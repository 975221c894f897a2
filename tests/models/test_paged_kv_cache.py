"""The paged KV cache on the tiny model: no padding, batched and mixed steps, its budget, its blocks."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import queuelab as ql
from queuelab.generation import GenerationParams
from queuelab.models.block_manager import OutOfBlocks
from queuelab.prompts import load_prompts

PROMPTS = [p["prompt"] for p in load_prompts()]


def test_a_ragged_batch_holds_whole_blocks_and_no_padding(tiny):
    batch = tiny.new_batch()
    seqs = [tiny.new_sequence(p, GenerationParams(max_new_tokens=6, ignore_eos=True)) for p in PROMPTS[:5]]
    info = batch.prefill(seqs)
    assert info.prefill_tokens == sum(s.prompt_tokens for s in seqs) and info.batch_size == 5  # one forward pass
    for _ in range(3):
        batch.decode()
    size = tiny.block_size
    cached = [s.prompt_tokens + 3 for s in seqs]  # the last token drawn is not in the cache yet
    blocks = sum(-(-c // size) for c in cached)
    assert batch.kv_tokens() == (blocks * size, 0)
    assert batch.kv_blocks() == (blocks, tiny.kv_blocks)
    usage = batch.kv_usage()
    fills = [((c - 1) % size + 1) / size for c in cached]
    assert usage.blocks_used == blocks and usage.last_block_fill == pytest.approx(sum(fills) / len(fills))
    batch.release(batch.running)
    assert batch.kv_blocks()[0] == 0 and batch.kv_usage().blocks_used == 0


def test_a_mixed_step_prefills_and_decodes_in_one_pass_with_the_same_answers(tiny):
    params = GenerationParams(max_new_tokens=8, ignore_eos=True)
    alone = {p: tiny.run_to_completion([tiny.new_sequence(p, params)])[0].text for p in PROMPTS[:4]}
    batch = tiny.new_batch()
    first = [tiny.new_sequence(p, params) for p in PROMPTS[:2]]
    batch.prefill(first)
    batch.decode()
    late = [tiny.new_sequence(p, params) for p in PROMPTS[2:4]]
    info = batch.mixed(late, list(batch.running))
    assert (info.batch_size, info.prefill_tokens, info.decode_tokens) == (
        4, sum(s.prompt_tokens for s in late), 2)
    while batch.running:
        batch.decode()
    assert [s.completion().text for s in first + late] == [alone[p] for p in PROMPTS[:4]]


def test_the_padded_cache_runs_prefill_and_decode_as_two_steps(tiny_padded):
    with pytest.raises(NotImplementedError, match="two steps"):
        tiny_padded.new_batch().mixed([], [])


async def test_continuous_batching_runs_joins_and_decodes_as_one_step(tiny):
    async with ql.RequestQueue(tiny, scheduler=ql.ContinuousBatchScheduler(max_batch=8)) as q:
        first = q.submit(PROMPTS[0], max_new_tokens=40, ignore_eos=True)
        while first.tokens_streamed < 3:
            await asyncio.sleep(0.001)
        later = [q.submit(p, max_new_tokens=4) for p in PROMPTS[1:4]]
        await asyncio.gather(first, *later)
        steps = q.steps()
    assert ((steps.prefill_tokens > 0) & (steps.decode_tokens > 0)).any()  # some step did both
    assert steps.pad_tokens.max() == 0 and steps.kv_blocks.max() >= 1


def test_a_budget_too_small_refuses_a_prompt_and_gives_back_what_it_took():
    model = ql.load_model("tiny-random", kv_blocks=4, block_size=4)
    batch = model.new_batch()
    seqs = [model.new_sequence(p, GenerationParams(max_new_tokens=4)) for p in ("hi", PROMPTS[0])]
    with pytest.raises(OutOfBlocks, match="KV cache full"):
        batch.prefill(seqs)
    assert batch.kv_blocks() == (0, 4) and batch.running == []


async def test_a_queue_reports_its_kv_blocks_in_stats(tiny):
    async with ql.RequestQueue(tiny, scheduler=ql.ContinuousBatchScheduler(max_batch=4)) as q:
        reqs = [q.submit(p, max_new_tokens=30, ignore_eos=True) for p in PROMPTS[:3]]
        while not all(r.tokens_streamed >= 2 for r in reqs):
            await asyncio.sleep(0.001)
        during = q.stats()
        await asyncio.gather(*reqs)
        after = q.stats()
    assert during.kv.blocks_used >= 3 and during.kv.blocks_total == tiny.kv_blocks
    assert after.kv.blocks_used == 0 and after.kv.blocks_free == tiny.kv_blocks
    assert after.as_dict()["kv"]["blocks_used"] == 0


def test_load_model_names_a_bad_cache_option():
    with pytest.raises(ValueError, match="kv_cache must be 'paged' or 'padded', got 'ring'"):
        ql.load_model("tiny-random", kv_cache="ring")
    with pytest.raises(ValueError, match="kv_blocks must be an int >= 1"):
        ql.load_model("tiny-random", kv_blocks=0)


@settings(max_examples=25, deadline=None)
@given(block_size=st.sampled_from([1, 3, 16]), lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
       joins=st.lists(st.integers(0, 4), min_size=1, max_size=5))
def test_any_join_pattern_gives_the_answers_of_each_alone(tiny, block_size, lengths, joins):
    # Sequences join a running batch at arbitrary steps (mixed steps), with arbitrary answer lengths.
    model = ql.load_model("tiny-random", block_size=block_size) if block_size != tiny.block_size else tiny
    prompts = [PROMPTS[(7 * i) % len(PROMPTS)] for i in range(len(lengths))]
    params = [GenerationParams(max_new_tokens=n, ignore_eos=True) for n in lengths]
    alone = [model.run_to_completion([model.new_sequence(p, k)])[0].text for p, k in zip(prompts, params)]
    batch = model.new_batch()
    seqs = [model.new_sequence(p, k) for p, k in zip(prompts, params)]
    pending = list(seqs)
    for wait in joins + [0] * len(seqs):
        if not pending and not batch.running:
            break
        for _ in range(wait):
            if batch.running:
                batch.decode()
        if pending:
            new = [pending.pop(0)]
            batch.mixed(new, list(batch.running)) if batch.running else batch.prefill(new)
        elif batch.running:
            batch.decode()
    while batch.running:
        batch.decode()
    assert [s.completion().text for s in seqs] == alone
    assert batch.kv_blocks()[0] == 0
