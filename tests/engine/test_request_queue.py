import asyncio
import functools
import random
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import queuelab as ql
from queuelab import RequestStatus as S
from tests.conftest import wait_until


def sim(service=0.005, **kw) -> ql.SimulatedModel:
    return ql.SimulatedModel(service, **kw)


def assert_fifo_one_at_a_time(reqs):
    served = sorted((r for r in reqs if r.started is not None), key=lambda r: r.started)
    assert [r.id for r in served] == sorted(r.id for r in served), "not started in submission order"
    for a, b in zip(served, served[1:]):
        assert a.finished <= b.started, f"requests {a.id} and {b.id} were processing at the same time"


def assert_timestamps_ordered(r):
    assert r.arrived <= (r.started or r.finished) and r.finished is not None
    if r.started is not None:
        assert r.started <= r.finished
        if r.first_token is not None:
            assert r.started <= r.first_token <= r.finished
        assert r.wait == pytest.approx(r.started - r.arrived)
        assert r.service == pytest.approx(r.finished - r.started)
    assert r.e2e == pytest.approx(r.finished - r.arrived)


async def test_completes_with_the_models_answer_and_honest_timings():
    model = sim(0.02)
    async with ql.RequestQueue(model) as q:
        reqs = [q.submit(f"question {i}", max_new_tokens=4) for i in range(3)]
        completions = [await r for r in reqs]
    assert [c.text for c in completions] == [model.generate(f"question {i}", max_new_tokens=4).text for i in range(3)]
    for r in reqs:
        assert r.status is S.COMPLETED
        assert_timestamps_ordered(r)
        assert r.first_token is not None and r.tokens_streamed == 4
    # queueing is part of latency: the third waited for the two before it
    assert reqs[2].wait >= 0.04 and reqs[2].e2e >= reqs[2].wait + 0.02


async def test_fifo_and_processing_never_above_one():
    async with ql.RequestQueue(sim(0.002)) as q:
        reqs = [q.submit(f"p{i}", max_new_tokens=2) for i in range(30)]
        seen = []
        while not all(r.done for r in reqs):
            seen.append(q.processing)
            await asyncio.sleep(0.001)
    assert max(seen) == 1
    assert_fifo_one_at_a_time(reqs)


async def test_idle_worker_waits_on_an_event_not_a_sleep():
    async with ql.RequestQueue(sim(0)) as q:
        await q.generate("warm up")

        def chain():  # follow the chain of awaits down to what the worker sleeps on
            awaiting, names = q._worker.get_coro(), []
            while awaiting is not None:
                names.append(getattr(awaiting, "__qualname__", type(awaiting).__name__))
                awaiting = getattr(awaiting, "cr_await", None)
            return names

        await wait_until(lambda: "Event.wait" in chain(), what="the idle worker to wait on its event")
        assert not any("sleep" in name for name in chain()), chain()


async def test_loop_stays_responsive_while_the_model_computes():
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with ql.RequestQueue(sim(0.3)) as q:
        t = asyncio.create_task(ticker())
        await q.generate("slow one", max_new_tokens=1)
        t.cancel()
    assert ticks >= 10  # a blocked loop would have ticked about once


async def test_a_model_failure_fails_one_request_and_the_worker_goes_on():
    async with ql.RequestQueue(sim(0.001, fail_if=lambda p: "boom" in p)) as q:
        reqs = [q.submit(p) for p in ("ok 1", "boom", "ok 2")]
        await asyncio.gather(*reqs, return_exceptions=True)
    assert [r.status for r in reqs] == [S.COMPLETED, S.FAILED, S.COMPLETED]
    assert "SimulatedFailure" in reqs[1].error and "boom" in reqs[1].error
    with pytest.raises(ql.RequestFailed, match="boom"):
        await reqs[1]


class ExplodingScheduler(ql.SequentialScheduler):
    def __init__(self, after: int) -> None:
        self.left = after

    def select(self, waiting):
        if self.left == 0:
            raise RuntimeError("scheduler bug")
        self.left -= 1
        return super().select(waiting)


async def test_a_dead_worker_is_reported_and_nothing_hangs():
    q = ql.RequestQueue(sim(0.001), scheduler=ExplodingScheduler(after=1))
    await q.start()
    reqs = [q.submit(f"p{i}") for i in range(4)]
    await asyncio.wait_for(asyncio.gather(*reqs, return_exceptions=True), 2)
    assert reqs[0].status is S.COMPLETED
    assert all(r.status is S.CANCELLED and "worker died: RuntimeError: scheduler bug" in r.error for r in reqs[1:])
    health = q.stats().health
    assert (health.state, health.worker_alive) == ("broken", False) and "scheduler bug" in health.error
    late = q.submit("after death")
    assert late.status is S.REJECTED and "worker died" in late.error
    await q.stop()
    assert q.stats().submitted == 5


async def test_queued_requests_time_out():
    async with ql.RequestQueue(sim(0.15), request_timeout=0.05) as q:
        reqs = [q.submit(f"p{i}") for i in range(3)]
        await asyncio.gather(*reqs, return_exceptions=True)
    assert [r.status for r in reqs] == [S.COMPLETED, S.CANCELLED, S.CANCELLED]
    assert reqs[1].error == "timeout" and reqs[1].e2e == pytest.approx(0.05, abs=0.04)


async def test_cancel_queued_but_not_processing():
    async with ql.RequestQueue(sim(0.05)) as q:
        first, second = q.submit("a"), q.submit("b")
        await wait_until(lambda: first.status is S.PROCESSING)
        assert q.cancel(first) is False
        assert q.cancel(second) is True and q.cancel(second) is False
        with pytest.raises(ql.RequestCancelled, match="cancelled by caller"):
            await second
        assert (await first).completion_tokens > 0
    assert q.stats().cancelled == 1


async def test_a_queue_cannot_cancel_another_queues_request():
    # Both queues number their requests from 1: the id alone must not decide whose request it is.
    model_a, model_b = sim(0.02), sim(0.02)
    async with ql.RequestQueue(model_a) as qa, ql.RequestQueue(model_b) as qb:
        a1, a2 = qa.submit("a1"), qa.submit("a2")
        b1, b2 = qb.submit("b1"), qb.submit("b2")
        assert (a2.id, a2.status) == (b2.id, S.QUEUED)
        assert qb.cancel(a2) is False and a2.status is S.QUEUED and b2.status is S.QUEUED
        await asyncio.gather(a1, a2, b1, b2)
    assert qa.stats().completed == qb.stats().completed == 2 and qa.health().error is None


async def test_stream_and_chat_template_must_be_booleans():
    async with ql.RequestQueue(sim(0.001)) as q:
        bad = [q.submit("hi", stream="yes"), q.submit("hi", chat_template=1)]
        good = q.submit("hi", stream=True)
        await good
    assert [r.status for r in bad] == [S.REJECTED, S.REJECTED]
    assert "stream must be True or False, got 'yes'" in bad[0].error and "chat_template" in bad[1].error
    assert q.stats().rejected == 2


async def test_full_queue_rejects_with_a_reason():
    async with ql.RequestQueue(sim(0.01), max_queue_size=2) as q:
        reqs = [q.submit(f"p{i}") for i in range(3)]  # the worker has not taken any yet
        assert reqs[2].status is S.REJECTED and "queue full" in reqs[2].error
        await asyncio.gather(*reqs, return_exceptions=True)
    assert [r.status for r in reqs] == [S.COMPLETED, S.COMPLETED, S.REJECTED]


@pytest.mark.parametrize("prompt, kwargs, words", [
    ("", {}, "prompt is empty"),
    (123, {}, "prompt must be a str"),
    ("ok", {"max_new_tokens": -1}, "max_new_tokens"),
    ("ok", {"max_tokens": 5}, "unknown generation option"),
    ("word " * 50, {}, "prompt is too long"),
    ("ok", {"temperature": -2}, "temperature"),
])
async def test_bad_input_is_rejected_and_the_worker_keeps_serving(prompt, kwargs, words):
    async with ql.RequestQueue(sim(0.001, max_context=40)) as q:
        bad = q.submit(prompt, **kwargs)
        good = q.submit("fine", max_new_tokens=2)
        assert bad.status is S.REJECTED and words in bad.error and bad.finished == bad.arrived
        with pytest.raises(ql.RequestRejected, match=words):
            await bad
        assert (await good).completion_tokens == 2


async def test_stop_drains_or_cancels():
    q = await ql.RequestQueue(sim(0.01)).start()
    reqs = [q.submit(f"p{i}") for i in range(5)]
    await q.stop(drain=True)
    assert all(r.status is S.COMPLETED for r in reqs)

    q = await ql.RequestQueue(sim(0.05)).start()
    reqs = [q.submit(f"p{i}") for i in range(5)]
    await wait_until(lambda: reqs[0].status is S.PROCESSING)
    await q.stop(drain=False)
    assert reqs[0].status is S.COMPLETED  # the running one finishes
    assert all(r.status is S.CANCELLED and r.error == "shutdown" for r in reqs[1:])


async def test_lifecycle_edges():
    q = ql.RequestQueue(sim(0))
    early = q.submit("too early")
    assert early.status is S.REJECTED and "not started" in early.error
    await q.start()
    await q.start()  # idempotent
    await q.generate("hi")
    await q.stop()
    await q.stop()  # idempotent
    late = q.submit("too late")
    assert late.status is S.REJECTED and late.error == "queue is stopped"
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        await q.start()
    s = q.stats()
    assert (s.submitted, s.completed, s.rejected) == (3, 1, 2)


def test_submit_outside_a_loop_says_how():
    with pytest.raises(RuntimeError, match="event loop"):
        ql.RequestQueue(sim(0)).submit("hi")


async def test_bad_queue_arguments():
    for kwargs in ({"max_queue_size": 0}, {"request_timeout": -1}, {"sample_interval": 0}):
        with pytest.raises(ValueError):
            ql.RequestQueue(sim(0), **kwargs)
    with pytest.raises(ValueError, match="LanguageModel"):
        ql.RequestQueue("gpt2")


async def test_a_second_queue_on_the_same_model_stops_the_first():
    model = sim(0.02)
    first = await ql.RequestQueue(model).start()
    leftover = [first.submit(f"p{i}") for i in range(3)]
    with pytest.warns(UserWarning, match="another RequestQueue was running"):
        second = await ql.RequestQueue(model).start()
    assert first.state == "stopped" and all(r.done for r in leftover)
    assert (await second.generate("hi")).completion_tokens > 0
    await second.stop()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == [], f"orphan tasks: {others}"


async def test_stats_snapshot():
    async with ql.RequestQueue(sim(0.15)) as q:
        reqs = [q.submit(f"prompt number {i}", max_new_tokens=3) for i in range(4)]
        await wait_until(lambda: q.processing == 1)
        s = q.stats()
        assert (s.queue_size, s.processing, s.submitted) == (3, 1, 4)
        assert s.active[0].id == reqs[0].id and s.active[0].prompt_preview == "prompt number 0"
        assert 0 < s.active[0].elapsed_s < 0.15
        await asyncio.gather(*reqs)
        s = q.stats()
    assert (s.queue_size, s.processing, s.completed, s.failed) == (0, 0, 4, 0)
    assert [r.id for r in s.recent] == [r.id for r in reversed(reqs)]
    e2e = [r.e2e for r in reqs]
    assert s.latency["e2e"].p50 == pytest.approx(np.percentile(e2e, 50))
    assert s.latency["wait"].mean == pytest.approx(np.mean([r.wait for r in reqs]))
    assert s.req_per_s > 0 and s.tokens_per_s == pytest.approx(3 * s.req_per_s)
    assert s.health.model["name"] == "simulated" and s.health.state == "running" and s.health.worker_alive
    assert q.stats().health.state == "stopped"
    d = s.as_dict()
    assert d["latency"]["ttft"]["n"] == 4 and d["recent"][0]["status"] == "completed"


async def test_timeline_records_and_stays_bounded():
    async with ql.RequestQueue(sim(0.01), sample_interval=0.005, timeline_max_rows=30) as q:
        reqs = [q.submit(f"p{i}") for i in range(10)]
        await wait_until(lambda: q.processing == 1 and len(q.timeline()) >= 2)
        mid = q.timeline()
        await asyncio.gather(*reqs)
        await wait_until(lambda: len(q.timeline()) == 30 and q.timeline().t.iloc[0] > reqs[-1].finished,
                         what="the ring buffer to hold only rows after the run")
    tl = q.timeline()
    assert len(tl) == 30 and list(tl.columns)[:4] == ["t", "elapsed", "queue_depth", "processing"]
    assert mid["queue_depth"].max() >= 5 and mid["processing"].max() == 1
    assert tl["t"].is_monotonic_increasing
    last = tl.iloc[-1]
    assert (last.queue_depth, last.processing, last.completed_total) == (0, 0, 10)


async def test_littles_law_on_a_recorded_run():
    """Mean queue depth sampled by the timeline equals arrival rate × mean wait (L = λW)."""
    rng = random.Random(1)
    async with ql.RequestQueue(sim(0.01), sample_interval=0.002) as q:
        reqs = []
        for _ in range(300):
            reqs.append(q.submit("x", max_new_tokens=1))
            await asyncio.sleep(rng.expovariate(70))  # ρ ≈ 0.7
        await asyncio.gather(*reqs)
    t0, t1 = reqs[0].arrived, max(r.started for r in reqs)
    tl = q.timeline()
    window = tl[(tl.t >= t0) & (tl.t <= t1)]
    L = window.queue_depth.mean()
    lam = len(reqs) / (t1 - t0)
    W = np.mean([r.wait for r in reqs])
    assert L == pytest.approx(lam * W, rel=0.10)


async def test_tiny_model_through_the_queue_records_first_token(tiny):
    async with ql.RequestQueue(tiny) as q:
        reqs = [q.submit(f"Count to {i}.", max_new_tokens=5) for i in range(3)]
        done = await asyncio.gather(*reqs)
    assert [c.text for c in done] == [tiny.generate(f"Count to {i}.", max_new_tokens=5).text for i in range(3)]
    for r in reqs:
        assert_timestamps_ordered(r)
        assert r.started < r.first_token < r.finished


async def test_run_refuses_inside_a_running_loop():
    async def nothing():
        return 1

    with pytest.raises(RuntimeError, match="use `await"):
        ql.run(nothing())


def test_run_works_from_sync_code_and_leaves_no_threads():
    async def main():
        async with ql.RequestQueue(sim(0)) as q:
            return await q.generate("hello", max_new_tokens=2)

    before = threading.active_count()
    assert ql.run(main()).completion_tokens == 2
    assert threading.active_count() == before  # the model's worker thread went with the loop


# -- conservation, over random interleavings ------------------------------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["ok", "boom", "", "long"])),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("sleep"), st.sampled_from([0, 0.001, 0.004])),
    ),
    max_size=40,
)


SCHEDULERS = {
    "sequential": ql.SequentialScheduler,
    "static": lambda: ql.StaticBatchScheduler(max_batch=3, max_wait_s=0.002),
    "length-grouped": lambda: ql.LengthGroupedScheduler(max_batch=3, max_wait_s=0.001, window=4),
    "continuous": lambda: ql.ContinuousBatchScheduler(max_batch=3),
    "continuous-tokens": lambda: ql.ContinuousBatchScheduler(max_batch=4, max_batch_tokens=12),
    "adaptive": lambda: ql.AdaptiveBatchScheduler(min_batch=1, max_batch=4),
}


@functools.cache
def tiny_paged_budget() -> ql.LanguageModel:
    """The tiny model on a paged cache of 12 blocks of 4 tokens: three or four short requests fill it."""
    return ql.load_model("tiny-random", kv_blocks=12, block_size=4)


def assert_batch_limits(reqs, scheduler):
    """At no instant more than max_batch requests process; admission order where the policy promises it."""
    served = [r for r in reqs if r.started is not None]
    events = sorted([(r.started, 1) for r in served] + [(r.finished, -1) for r in served], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak <= scheduler.max_batch
    if not isinstance(scheduler, ql.LengthGroupedScheduler):  # length grouping reorders on purpose
        by_start = sorted(served, key=lambda r: (r.started, r.id))
        assert [r.id for r in by_start] == sorted(r.id for r in served), "not admitted in arrival order"
    if isinstance(scheduler, ql.StaticBatchScheduler):  # a batch starts only after the previous one ended
        batches = {}
        for r in served:
            batches.setdefault(r.started, []).append(r)
        spans = sorted((start, max(r.finished for r in b)) for start, b in batches.items())
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, drain=st.booleans(), timeout=st.sampled_from([None, 0.003]), fail_rate=st.sampled_from([0, 0.3]),
       max_size=st.sampled_from([3, 1000]), seed=st.integers(0, 10), scheduler=st.sampled_from(sorted(SCHEDULERS)),
       tokens=st.sampled_from([1, 2, 5]), model_kind=st.sampled_from(["sim", "sim-tiny-budget", "tiny-paged-budget"]))
def test_conservation_every_request_ends_in_exactly_one_terminal_state(ops, drain, timeout, fail_rate, max_size, seed,
                                                                      scheduler, tokens, model_kind):
    # Small KV budgets: a step that finds no free block fails its requests (FAILED, counted) and the
    # queue goes on; nothing is lost either way.
    async def scenario():
        if model_kind == "tiny-paged-budget":
            model = tiny_paged_budget()
        else:
            model = sim(0.002, seed=seed, failure_rate=fail_rate, fail_if=lambda p: "boom" in p, max_context=50,
                        **({"kv_blocks": 5, "block_size": 2} if model_kind == "sim-tiny-budget" else {}))
        q = await ql.RequestQueue(model, request_timeout=timeout, max_queue_size=max_size,
                                  scheduler=SCHEDULERS[scheduler]()).start()
        reqs = []
        for op, arg in ops:
            if op == "submit":
                reqs.append(q.submit("word " * 60 if arg == "long" else arg, max_new_tokens=tokens))
            elif op == "cancel" and reqs:
                q.cancel(reqs[arg % len(reqs)])
            elif op == "sleep":
                await asyncio.sleep(arg)
        await q.stop(drain=drain)
        return q, reqs

    q, reqs = asyncio.run(scenario())
    s = q.stats()
    assert all(r.status.terminal for r in reqs)
    assert s.submitted == len(reqs) == s.completed + s.failed + s.cancelled + s.rejected
    for status in (S.COMPLETED, S.FAILED, S.CANCELLED, S.REJECTED):
        assert sum(r.status is status for r in reqs) == getattr(s, status.value)
    if scheduler == "sequential":
        assert_fifo_one_at_a_time(reqs)
    assert_batch_limits(reqs, q.scheduler)
    for r in reqs:
        assert_timestamps_ordered(r)
        if r.status is S.REJECTED:
            assert r.started is None and r.finished == r.arrived and r.error is not None
        if r.status is S.COMPLETED and model_kind != "tiny-paged-budget":  # a real model may stop at EOS
            assert r.completion.completion_tokens == tokens
    if drain:
        assert not any(r.error == "shutdown" for r in reqs)


async def test_streaming_hands_over_every_piece_in_order(tiny):
    async with ql.RequestQueue(tiny) as q:
        req = q.submit("Stream this, please.", stream=True, max_new_tokens=6)
        pieces = [p async for p in req.stream()]
    assert "".join(pieces) == req.completion.text and len(pieces) >= 1


async def test_streaming_a_failure_raises_after_the_pieces():
    async with ql.RequestQueue(sim(0.001, fail_if=lambda p: "boom" in p)) as q:
        req = q.submit("boom", stream=True)
        with pytest.raises(ql.RequestFailed):
            [p async for p in req.stream()]
    with pytest.raises(RuntimeError, match="stream=True"):
        async with ql.RequestQueue(sim(0)) as q:
            [p async for p in q.submit("x").stream()]


async def test_refusal_codes():
    q = ql.RequestQueue(sim(0.01), max_queue_size=1)
    assert q.submit("early").refusal == "unavailable"
    async with q:
        codes = [q.submit(p).refusal for p in ("a", "b", "")]
    assert codes == [None, "queue_full", "invalid_request"]


async def test_histograms_count_completed_requests():
    async with ql.RequestQueue(sim(0.002)) as q:
        await asyncio.gather(*(q.submit(f"p{i}") for i in range(5)))
    h = q.histograms()["e2e"]
    assert h.count == 5 and h.cumulative()[-1] == (float("inf"), 5)
    assert h.total == pytest.approx(q.stats().latency["e2e"].mean * 5)


async def test_timeline_window_and_mean_service():
    async with ql.RequestQueue(sim(0.004), sample_interval=0.005) as q:
        reqs = [q.submit(f"p{i}") for i in range(20)]
        await asyncio.gather(*reqs)
        assert q.mean_service_s == pytest.approx(np.mean([r.service for r in reqs]))
        full, recent = q.timeline(), q.timeline(window_s=0.03)
    assert 0 < len(recent) < len(full)
    assert recent.t.iloc[-1] == full.t.iloc[-1] and (recent.t >= recent.t.iloc[-1] - 0.03).all()
    assert list(recent.t) == list(full.t[full.t >= full.t.iloc[-1] - 0.03])
    assert ql.RequestQueue(sim(0)).mean_service_s is None
