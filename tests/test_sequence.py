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


# -- stop strings, ignore_eos, min_tokens ----------------------------------------------------------------
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def feed(pieces, params):
    out = []
    s = Sequence("p", params, prompt_tokens=1, on_token=out.append)
    for i, piece in enumerate(pieces):
        if s.append(i, float(i), piece=piece):
            break
    return s, out


def test_a_stop_string_ends_the_answer_before_it_even_across_pieces():
    s, out = feed(["Hello", " wor", "ld.", " More"], GenerationParams(max_new_tokens=10, stop=["world"]))
    assert (s.text, s.finish_reason, s.completion_tokens) == ("Hello ", "stop", 3)
    assert "".join(out) == "Hello "  # " wor" was held back: it could have been the start of the stop string


def test_held_back_text_is_released_when_it_turns_out_not_to_stop():
    s, out = feed(["a E", "x", "y"], GenerationParams(max_new_tokens=3, stop=["EN"]))
    assert out == ["a ", "Ex", "y"] and s.text == "a Exy" and s.finish_reason == "length"


def test_ignore_eos_and_min_tokens_keep_going_past_eos():
    eos_at_2 = [(1, False), (9, True), (2, False), (3, False)]

    def run(params):
        s = Sequence("p", params, prompt_ids=[5], decoder=decoder)
        for t, eos in eos_at_2:
            if s.append(t, 0.0, eos=eos):
                break
        return s.finish_reason, s.completion_tokens, s.text

    assert run(GenerationParams(max_new_tokens=4)) == ("stop", 2, "Hello")
    assert run(GenerationParams(max_new_tokens=4, ignore_eos=True)) == ("length", 4, "Hello world")
    assert run(GenerationParams(max_new_tokens=4, min_tokens=2)) == ("length", 4, "Hello world")
    assert run(GenerationParams(max_new_tokens=4, min_tokens=1)) == ("stop", 2, "Hello")


alphabet = st.text(alphabet="ab c", max_size=4)


@given(st.lists(alphabet, min_size=1, max_size=12), st.lists(st.text(alphabet="ab c", min_size=1, max_size=3),
                                                                  min_size=1, max_size=4))
def test_stop_strings_property(pieces, stops):
    """Whatever the pieces: the text is the full text cut before the first stop string, the stream
    hands out exactly the text, and no stop string appears in it."""
    s, out = feed(pieces, GenerationParams(max_new_tokens=len(pieces), stop=stops))
    full = "".join(pieces[:s.completion_tokens])
    hits = [i for i in (full.find(x) for x in stops) if i >= 0]
    expected = full[:min(hits)] if hits else full
    assert "".join(out) == s.text == expected
    assert not any(x in s.text for x in stops)
    assert s.finish_reason == ("stop" if hits else "length")
