"""KV-cache sizing: bytes per token from the config, against what a real RunningBatch holds."""

import pandas as pd
import pytest

import queuelab as ql
from queuelab.generation import GenerationParams
from queuelab.lab import kv_budget


def test_bytes_per_token_of_the_tiny_model(tiny):
    # tiny-random: 2 layers, 2 KV heads of 64 // 4 = 16 numbers, fp32 → 2 × 2 × 2 × 16 × 4 bytes
    assert kv_budget.bytes_per_token(tiny) == 2 * 2 * 2 * 16 * 4


def test_bytes_per_token_matches_a_real_padded_batch(tiny_padded):
    tiny = tiny_padded
    per_token = kv_budget.bytes_per_token(tiny)
    batch = tiny.new_batch()
    prompts = ["What is a queue?", "Explain, in a few words, why a batch of requests shares one forward pass."]
    batch.prefill([tiny.new_sequence(p, GenerationParams(max_new_tokens=8)) for p in prompts])
    for _ in range(3):
        batch.decode()
    slots, pad = batch.kv_tokens()
    lengths = [s.prompt_tokens for s in batch.running]
    assert (slots, pad) == kv_budget.padded_slots(lengths, decode_steps=3)
    # The buffers hold the slots plus up to 32 spare columns per row (see kv_cache._KVLayer), all at per_token bytes.
    rows = len(batch.running)
    assert per_token * slots < batch.kv_bytes() <= per_token * (slots + 32 * rows)
    assert (batch.kv_bytes() - per_token * slots) % (per_token * rows) == 0
    batch.release(batch.running)


def test_a_model_without_a_kv_cache_is_refused():
    with pytest.raises(ValueError, match="no KV cache"):
        kv_budget.bytes_per_token(ql.SimulatedModel(0.01))


def test_padded_slots_pads_every_row_to_the_longest():
    assert kv_budget.padded_slots([10, 10]) == (20, 0)
    assert kv_budget.padded_slots([10, 40], decode_steps=5) == (90, 30)
    with pytest.raises(ValueError):
        kv_budget.padded_slots([])
    with pytest.raises(ValueError):
        kv_budget.padded_slots([0, 4])


def test_largest_batch_is_the_floor_of_budget_over_row_bytes():
    assert kv_budget.largest_batch(1000, per_token=10, context_tokens=10) == 10
    assert kv_budget.largest_batch(999, per_token=10, context_tokens=10) == 9
    assert kv_budget.largest_batch(50, per_token=10, context_tokens=10) == 0
    with pytest.raises(ValueError):
        kv_budget.largest_batch(-1, per_token=10, context_tokens=10)
    with pytest.raises(ValueError):
        kv_budget.largest_batch(100, per_token=0, context_tokens=10)


def test_padding_fraction_counts_decode_steps_only():
    steps = pd.DataFrame({"decode_tokens": [0, 2, 2], "kv_tokens": [100, 40, 60], "pad_tokens": [90, 10, 15]})
    assert kv_budget.padding_fraction(steps) == pytest.approx(25 / 100)
    assert pd.isna(kv_budget.padding_fraction(steps.iloc[:1]))
