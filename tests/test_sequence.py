"""`Sequence`: finish reasons, the EOS token's count, and the text stream."""

import pytest

from queuelab.generation import GenerationParams
from queuelab.sequence import Sequence

WORDS = {1: "Hello", 2: " wor", 3: "ld", 4: "!", 9: "</s>"}


def decoder(ids):
    return "".join(WORDS[i] for i in ids if i != 9)


def seq(n=8, on_token=None):
    return Sequence("p", GenerationParams(max_new_tokens=n), prompt_ids=[5, 6, 7], decoder=decoder, on_token=on_token)


def test_eos_stops_and_counts_but_is_not_text():
    pieces = []
    s = seq(on_token=pieces.append)
    assert [s.append(t, 1.0 + t, eos=t == 9) for t in (1, 2, 9)] == [False, False, True]
    assert (s.finish_reason, s.completion_tokens, s.text) == ("stop", 3, "Hello wor")
    assert pieces == ["Hello", " wor"]
    s.started = 0.5
    c = s.completion()
    assert (c.completion_tokens, c.finish_reason, c.prompt_tokens) == (3, "stop", 3)
    assert c.ttft_s == pytest.approx(1.5)  # first token at 2.0, prefill began at 0.5


def test_length_limit_and_no_append_after_finish():
    s = seq(n=2)
    s.append(1, 0.0)
    assert s.append(2, 0.0) and s.finish_reason == "length"
    with pytest.raises(RuntimeError, match="finished"):
        s.append(3, 0.0)


def test_incomplete_utf8_is_held_back_until_the_character_is_whole():
    texts = {(1,): "caf", (1, 2): "caf\ufffd", (1, 2, 3): "café"}
    pieces = []
    s = Sequence("p", GenerationParams(max_new_tokens=8), prompt_ids=[1], on_token=pieces.append,
                 decoder=lambda ids: texts[tuple(ids)])
    for t in (1, 2, 3):
        s.append(t, 0.0)
    assert pieces == ["caf", "é"] and s.text == "café"


def test_completion_before_finish_is_an_error():
    with pytest.raises(RuntimeError, match="before the sequence finished"):
        seq().completion()
