"""The transformers wrapper, on the tiny random model (milliseconds per call)."""

from unittest import mock

import pytest
import torch

import queuelab as ql
from queuelab.generation import MAX_NEW_TOKENS_LIMIT
from queuelab.models import transformers_model

PROMPTS = ["What is a queue?", "Write one long sentence about waiting in line at a bakery on a Sunday.", "Hi"]


def test_greedy_generate_is_deterministic(tiny):
    a = tiny.generate(PROMPTS[0], max_new_tokens=6)
    b = tiny.generate(PROMPTS[0], max_new_tokens=6)
    assert a.text == b.text
    assert a.prompt_tokens == tiny.count_tokens(PROMPTS[0]) > 5  # chat template included
    assert 1 <= a.completion_tokens <= 6
    assert a.finish_reason in ("stop", "length")
    assert a.finish_reason == "length" or a.completion_tokens < 6
    assert 0 < a.ttft_s <= a.duration_s


def test_streaming_pieces_rebuild_the_text(tiny):
    pieces: list[str] = []
    c = tiny.generate(PROMPTS[1], max_new_tokens=8, on_token=pieces.append)
    assert "".join(pieces) == c.text


def test_batch_matches_single_greedy(tiny):
    singles = [tiny.generate(p, max_new_tokens=8) for p in PROMPTS]
    batch = tiny.generate_batch(PROMPTS, max_new_tokens=8)
    assert [c.text for c in batch] == [c.text for c in singles]
    assert [c.prompt_tokens for c in batch] == [c.prompt_tokens for c in singles]
    assert [c.completion_tokens for c in batch] == [c.completion_tokens for c in singles]


def test_sampling_with_seed_is_reproducible(tiny):
    a = tiny.generate(PROMPTS[0], max_new_tokens=12, temperature=1.5, seed=3)
    b = tiny.generate(PROMPTS[0], max_new_tokens=12, temperature=1.5, seed=3)
    c = tiny.generate(PROMPTS[0], max_new_tokens=12, temperature=1.5, seed=4)
    assert a.text == b.text
    assert a.text != c.text


@pytest.mark.parametrize(
    "prompt, kwargs, words",
    [
        (None, {}, "prompt must be a str"),
        (123, {}, "prompt must be a str"),
        ("", {}, "prompt is empty"),
        ("hi", {"max_new_tokens": 0}, "max_new_tokens must be between 1"),
        ("hi", {"max_new_tokens": MAX_NEW_TOKENS_LIMIT + 1}, "max_new_tokens must be between 1"),
        ("hi", {"temperature": -1.0}, "temperature"),
        ("word " * 2100, {}, "prompt is too long"),
    ],
)
def test_bad_input_is_refused_before_running(tiny, prompt, kwargs, words):
    with mock.patch.object(tiny.model, "generate") as hf_generate:
        with pytest.raises(ValueError, match=words):
            tiny.generate(prompt, **kwargs)
        hf_generate.assert_not_called()


def test_batch_rejects_bad_prompt_lists(tiny):
    for bad in ([], "just a string", ["ok", ""]):
        with pytest.raises(ValueError):
            tiny.generate_batch(bad)


def test_info(tiny):
    info = tiny.info()
    assert info["name"] == "tiny-random"
    assert info["parameters"] == sum(p.numel() for p in tiny.model.parameters())
    assert info["memory_bytes"] >= info["parameters"] * 4
    assert (info["dtype"], info["device"]) == ("float32", "cpu")


def test_tiny_is_seeded_identically_and_leaves_global_rng_alone(tiny):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    again = ql.load_model("tiny-random")
    assert torch.rand(1) == expected
    for a, b in zip(tiny.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_local_directory_loads(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    local = ql.load_model(str(tmp_path))
    assert local.generate(PROMPTS[0], max_new_tokens=5).text == tiny.generate(PROMPTS[0], max_new_tokens=5).text


def test_unknown_model_offline_names_the_embedded_default(monkeypatch):
    monkeypatch.setattr(transformers_model, "_hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ValueError, match="no model hub can be reached.*smollm2-135m") as err:
        ql.load_model("no-such-org/no-such-model")
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("kwargs, words", [({"device": "warp-drive"}, "unknown device"), ({"dtype": "float7"}, "unknown dtype")])
def test_bad_device_or_dtype(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ql.load_model("tiny-random", **kwargs)


def test_bad_model_name():
    with pytest.raises(ValueError, match="non-empty string"):
        ql.load_model("")


def test_auto_device_prefers_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ql.pick_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert ql.pick_device("auto") == "cpu"
    assert ql.pick_device("cpu") == "cpu"
