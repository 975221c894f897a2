import random
import threading
import time
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import queuelab as ql


def test_fixed_service_time_is_honoured():
    m = ql.SimulatedModel(0.05)
    c = m.generate("hello there", max_new_tokens=5)
    assert c.duration_s >= 0.05
    assert 0 < c.ttft_s <= c.duration_s
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (2, 5, "length")
    assert len(c.text.split()) == 5


def test_per_token_cost_grows_with_length():
    m = ql.SimulatedModel(ql.PerToken(0.002, prefill_s=0.01))
    short, long = m.generate("x", max_new_tokens=2), m.generate("x", max_new_tokens=20)
    assert short.duration_s >= 0.014 and long.duration_s >= 0.05
    assert long.duration_s > short.duration_s


def test_streamed_pieces_rebuild_the_text():
    pieces: list[str] = []
    c = ql.SimulatedModel(0.0).generate("stream me", max_new_tokens=7, on_token=pieces.append)
    assert len(pieces) == 7 and "".join(pieces) == c.text


def test_text_is_deterministic_per_prompt():
    a, b = ql.SimulatedModel(0), ql.SimulatedModel(0)
    assert a.generate("p1", max_new_tokens=6).text == b.generate("p1", max_new_tokens=6).text
    assert a.generate("p1", max_new_tokens=6).text != a.generate("p2", max_new_tokens=6).text


def test_exponential_distribution_moments():
    dist, rng = ql.Exponential(0.2), random.Random(0)
    xs = [dist.sample(rng, 10) for _ in range(20000)]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / len(xs)
    assert mean == pytest.approx(0.2, rel=0.03)
    assert var / mean**2 == pytest.approx(1.0, abs=0.08)
    assert (dist.mean(1), dist.scv(1), ql.Fixed(0.3).scv(1)) == (0.2, 1.0, 0.0)


def test_seeded_failures_are_reproducible():
    def outcomes(seed):
        m = ql.SimulatedModel(0, seed=seed, failure_rate=0.5)
        out = []
        for i in range(40):
            try:
                m.generate(f"p{i}", max_new_tokens=1)
                out.append("ok")
            except ql.SimulatedFailure:
                out.append("fail")
        return out

    a = outcomes(7)
    assert a == outcomes(7)
    assert 5 < a.count("fail") < 35


def test_fail_if_fails_only_matching_prompts():
    m = ql.SimulatedModel(0, fail_if=lambda p: "boom" in p)
    with pytest.raises(ql.SimulatedFailure, match="boom"):
        m.generate("boom now", max_new_tokens=1)
    assert m.generate("fine", max_new_tokens=1).completion_tokens == 1


@pytest.mark.parametrize("bad", [-1, float("inf"), "0.1", None, True])
def test_bad_service_time(bad):
    with pytest.raises(ValueError, match="seconds|service_time"):
        ql.SimulatedModel(bad)


def test_bad_failure_rate():
    with pytest.raises(ValueError, match="failure_rate"):
        ql.SimulatedModel(0, failure_rate=1.5)


def test_steps_never_overlap_across_threads():
    """Each thread's generate runs its own batch; the model runs one step at a time."""
    m = ql.SimulatedModel(0.02)
    spans: list[tuple[float, float]] = []
    batch_class = type(m.new_batch())
    real_prefill, real_decode = batch_class._prefill, batch_class._decode

    def timed(real):
        def step(self, seqs):
            t0 = time.perf_counter()
            try:
                return real(self, seqs)
            finally:
                spans.append((t0, time.perf_counter()))
        return step

    with mock.patch.object(batch_class, "_prefill", timed(real_prefill)), \
            mock.patch.object(batch_class, "_decode", timed(real_decode)):
        threads = [threading.Thread(target=m.generate, args=(f"p{i}",), kwargs={"max_new_tokens": 2})
                   for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    spans.sort()
    assert len(spans) == 8  # a prefill and a decode step per call
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))


def test_context_limit():
    m = ql.SimulatedModel(0, max_context=10)
    with pytest.raises(ValueError, match="too long"):
        m.generate("one two three four five six", max_new_tokens=5)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1).filter(str.strip), st.integers(1, 40))
def test_any_valid_request_yields_exactly_its_tokens(prompt, n):
    c = ql.SimulatedModel(0).generate(prompt, max_new_tokens=n)
    assert c.completion_tokens == n == len(c.text.split())
    assert c.prompt_tokens == len(prompt.split())


def test_batch_takes_as_long_as_slowest():
    cs = ql.SimulatedModel(0.03).generate_batch(["a", "b c"], max_new_tokens=3)
    assert [c.prompt_tokens for c in cs] == [1, 2]
    assert all(c.duration_s >= 0.03 for c in cs)
