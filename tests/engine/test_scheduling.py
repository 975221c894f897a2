"""Schedulers as pure policies: given a waiting line and a running set, what is the next step?"""

from collections import OrderedDict

import pytest

import queuelab as ql
from queuelab.engine.scheduling import SCHEDULERS, make_scheduler
from queuelab.generation import GenerationParams


def line(*prompt_tokens, max_new=8, t0=0.0):
    reqs = [ql.Request(id=i + 1, prompt="p", params=GenerationParams(max_new_tokens=max_new), arrived=t0 + i * 0.01,
                       prompt_tokens=n) for i, n in enumerate(prompt_tokens)]
    return OrderedDict((r.id, r) for r in reqs)


def test_sequential_takes_the_oldest_and_admits_nothing_while_running():
    s = ql.SequentialScheduler()
    waiting = line(5, 5, 5)
    step = s.schedule(waiting, [], 0.0)
    assert [r.id for r in step.prefill] == [1] and list(waiting) == [2, 3]
    assert s.schedule(waiting, step.prefill, 0.0) == ql.Step(decode=step.prefill)
    assert s.schedule(OrderedDict(), [], 0.0) == ql.Wait()


def test_static_waits_to_fill_then_runs_the_batch_to_the_end():
    s = ql.StaticBatchScheduler(max_batch=3, max_wait_s=0.1)
    waiting = line(5, 5)
    assert s.schedule(waiting, [], 0.05) == ql.Wait(until=pytest.approx(0.1))  # not full, not due
    step = s.schedule(waiting, [], 0.1)  # due: go with what there is
    assert [r.id for r in step.prefill] == [1, 2] and not waiting
    more = line(5, 5, 5, 5, t0=1.0)
    assert s.schedule(more, step.prefill, 1.0) == ql.Step(decode=step.prefill)  # nothing joins
    assert [r.id for r in s.schedule(more, [], 1.0).prefill] == [1, 2, 3]  # full: no need to wait


def test_continuous_admits_in_arrival_order_within_both_limits():
    s = ql.ContinuousBatchScheduler(max_batch=3, max_batch_tokens=40)
    waiting = line(10, 10, 2, 2)  # each needs prompt + 8 tokens of KV
    step = s.schedule(waiting, [], 0.0)
    assert [r.id for r in step.prefill] == [1, 2]  # 18 + 18; the third (10) would pass 40
    assert list(waiting) == [3, 4]
    step2 = s.schedule(waiting, [step.prefill[0]], 0.0)  # one left: room again
    assert [r.id for r in step2.prefill] == [3, 4] and step2.decode == [step.prefill[0]]


def test_continuous_runs_an_oversized_request_alone_rather_than_never():
    s = ql.ContinuousBatchScheduler(max_batch=4, max_batch_tokens=10)
    waiting = line(50, 1)
    assert [r.id for r in s.schedule(waiting, [], 0.0).prefill] == [1]


def test_length_grouping_keeps_the_oldest_and_picks_similar_lengths():
    s = ql.LengthGroupedScheduler(max_batch=3, max_wait_s=0)
    waiting = line(30, 5, 29, 6, 31)
    step = s.schedule(waiting, [], 1.0)
    assert [r.prompt_tokens for r in step.prefill] == [30, 29, 31]
    assert [r.id for r in s.schedule(waiting, [], 1.0).prefill] == [2, 4]


def test_adaptive_grows_under_load_and_shrinks_when_idle():
    s = ql.AdaptiveBatchScheduler(min_batch=1, max_batch=8)
    waiting = line(*[5] * 20)
    running = []
    sizes = []
    for _ in range(5):
        running = running + s.schedule(waiting, running, 0.0).prefill
        sizes.append(len(running))
    assert sizes == [2, 4, 8, 8, 8]  # more work than seats: the limit doubles at every decision
    for _ in range(4):
        s.schedule(OrderedDict(), running[:1], 0.0)
    assert s.limit == 1


async def test_adaptive_grows_in_a_burst_with_no_further_arrivals():
    # Consulted only when a seat has just come free, the batch never looks full; the backlog must still grow it.
    model = ql.SimulatedModel(step_costs=ql.StepCosts(decode_base_s=0.002), answer_tokens=lambda p: 2 + len(p) % 5)
    async with ql.RequestQueue(model, scheduler=ql.AdaptiveBatchScheduler(min_batch=1, max_batch=8)) as q:
        reqs = [q.submit(f"burst request {i}", max_new_tokens=8) for i in range(24)]
        for r in reqs:
            await r
        steps = q.steps()
    assert steps.batch_size.max() == 8


def test_cli_names_build_every_scheduler():
    for name in SCHEDULERS:
        assert make_scheduler(name).max_batch >= 1
    assert make_scheduler("continuous", 32).max_batch == 32
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("fastest")
    with pytest.raises(ValueError, match="one request at a time"):
        make_scheduler("sequential", 4)


@pytest.mark.parametrize("make", [lambda: ql.StaticBatchScheduler(max_batch=0), lambda: ql.StaticBatchScheduler(max_wait_s=-1),
                                  lambda: ql.ContinuousBatchScheduler(max_batch=True),
                                  lambda: ql.ContinuousBatchScheduler(max_batch_tokens=0),
                                  lambda: ql.AdaptiveBatchScheduler(min_batch=9, max_batch=8)])
def test_bad_scheduler_options_are_named(make):
    with pytest.raises(ValueError, match="max_batch|max_wait_s|min_batch"):
        make()
