"""The embedded SmolLM2-135M-Instruct, for real (converted once per machine, then cached)."""

import pytest

import queuelab as ql
from queuelab.models import embedded

pytestmark = pytest.mark.real_model


def test_greedy_answer_knows_paris(real):
    c = real.generate("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in c.text
    assert c.finish_reason == "stop" and c.completion_tokens < 24


def test_cached_reload_skips_conversion(real, monkeypatch):
    def no_conversion(out):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(embedded, "_convert_model", no_conversion)
    again = ql.load_model()
    assert again.info()["converted"] is False
    assert again.info()["parameters"] == real.info()["parameters"] == 134_515_008


def test_batch_matches_single_greedy(real):
    prompts = ["What is the capital of France?", "Name three colours.", "Explain in one sentence what a queue is."]
    singles = [real.generate(p, max_new_tokens=16) for p in prompts]
    batch = real.generate_batch(prompts, max_new_tokens=16)
    assert [c.text for c in batch] == [c.text for c in singles]
    assert [c.completion_tokens for c in batch] == [c.completion_tokens for c in singles]


def test_streaming_matches_text(real):
    pieces: list[str] = []
    c = real.generate("Say hello.", max_new_tokens=12, on_token=pieces.append)
    assert "".join(pieces) == c.text and len(pieces) >= 2
