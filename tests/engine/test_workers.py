"""Several workers on one FIFO: threads sharing a model (`workers=N`) and model copies (a list)."""

import asyncio
import threading

import pytest

import queuelab as ql
from queuelab import RequestStatus as S
from queuelab.prompts import load_prompts
from tests.conftest import wait_until

TERMINAL = {S.COMPLETED, S.FAILED, S.CANCELLED, S.REJECTED}


def sim(service=0.05, **kw) -> ql.SimulatedModel:
    return ql.SimulatedModel(service, **kw)


@pytest.mark.parametrize("make", [lambda: ql.RequestQueue(sim(0.01), workers=3),
                                  lambda: ql.RequestQueue([sim(0.01) for _ in range(3)])],
                         ids=["threads", "copies"])
async def test_every_request_ends_in_exactly_one_terminal_state(make):
    q = make()
    await q.start()
    reqs = [q.submit(f"p{i}", max_new_tokens=2) for i in range(40)]
    reqs.append(q.submit(""))  # refused at the door
    await wait_until(lambda: q.stats().completed >= 10, what="ten completions")
    for r in reqs[30:35]:
        q.cancel(r)
    await q.stop(drain=False)
    assert all(r.status in TERMINAL for r in reqs)
    s = q.stats()
    assert s.submitted == len(reqs) == s.completed + s.failed + s.cancelled + s.rejected
    assert s.rejected == 1 and s.cancelled >= 5
    done = [r for r in reqs if r.status is S.COMPLETED]
    assert len({r.id for r in done}) == len(done) == s.completed  # nobody served twice


@pytest.mark.parametrize("workers", [2, 3])
async def test_processing_reaches_the_number_of_workers_under_load(workers):
    async with ql.RequestQueue(sim(0.2), workers=workers) as q:
        reqs = [q.submit(f"p{i}", max_new_tokens=4) for i in range(2 * workers)]
        await wait_until(lambda: q.processing == workers, what=f"{workers} processing")
        assert q.stats().processing == workers and len(q.stats().active) == workers
        assert q.processing <= workers
        await asyncio.gather(*reqs)
    assert q.timeline().processing.max() <= workers


async def test_the_default_is_still_one_worker_and_one_step_at_a_time():
    model = sim(0.01)
    q = ql.RequestQueue(model)
    assert q.workers == 1 and q.models == [model]
    async with q:
        await asyncio.gather(*[q.submit(f"p{i}", max_new_tokens=2) for i in range(5)])
    assert model.concurrent_steps == 1 and "worker" not in q.steps().columns


async def test_copies_serve_in_parallel():
    n, per_request = 3, 0.1
    copies = [sim(per_request) for _ in range(n)]
    async with ql.RequestQueue(copies) as q:
        run = await ql.stress.rapid_fire(q, n=4 * n, max_new_tokens=4, progress=False)
        steps = q.steps()
    s = run.summary
    # Against this run's own service time, not fixed numbers: n copies finish ~n requests per service time.
    assert s["req_per_s"] >= 0.8 * n / s["service_mean"]
    assert sorted(steps.worker.unique()) == list(range(n))
    assert q.stats().health.model["copies"] == n


async def test_threads_lift_the_models_one_step_limit_while_they_run():
    model = sim(0.1)
    async with ql.RequestQueue(model, workers=3) as q:
        assert model.concurrent_steps == 3
        run = await ql.stress.rapid_fire(q, n=9, max_new_tokens=2, progress=False)
    assert model.concurrent_steps == 1  # restored at stop
    # Sleep-based steps overlap perfectly: three workers, about three times one worker's rate.
    assert run.summary["req_per_s"] >= 0.8 * 3 / run.summary["service_mean"]


async def test_threaded_greedy_answers_equal_sequential_ones_on_the_tiny_model(tiny):
    prompts = [p["prompt"] for p in load_prompts()[:12]]
    expected = [tiny.generate(p, max_new_tokens=12).text for p in prompts]
    async with ql.RequestQueue(tiny, workers=3) as q:
        reqs = [q.submit(p, max_new_tokens=12) for p in prompts]
        await wait_until(lambda: q.processing == 3 or all(r.done for r in reqs), what="three processing")
        answers = [(await r).text for r in reqs]
    assert answers == expected


def test_model_steps_really_overlap_when_allowed(tiny):
    """Three threads inside forward passes at once: the semaphore admits them, and answers stay right."""
    prompts = [p["prompt"] for p in load_prompts()[:6]]
    expected = [tiny.generate(p, max_new_tokens=8).text for p in prompts]
    tiny.concurrent_steps = 3
    inside, most, guard = 0, 0, threading.Lock()
    forward = tiny.model.forward

    def counting_forward(*a, **kw):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        try:
            return forward(*a, **kw)
        finally:
            with guard:
                inside -= 1

    tiny.model.forward = counting_forward
    barrier = threading.Barrier(3)
    out = [None] * len(prompts)

    def work(i):
        barrier.wait()
        for j in range(i, len(prompts), 3):
            out[j] = tiny.generate(prompts[j], max_new_tokens=8).text

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del tiny.model.forward
        tiny.concurrent_steps = 1
    assert out == expected
    assert most >= 2  # steps ran at the same time (with the default lock this stays 1)


def test_concurrent_steps_checks_its_value():
    model = sim()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="concurrent_steps"):
            model.concurrent_steps = bad


def test_bad_arguments_are_named():
    a, b = sim(), sim()
    cases = [
        ((a,), {"workers": 0}, "workers must be an int >= 1"),
        ((a,), {"workers": 2.5}, "workers must be an int >= 1"),
        (([],), {}, "empty list of models"),
        (([a, b],), {"workers": 2}, "not both"),
        (([a, a],), {}, "appears twice"),
        (([a, ql.SimulatedModel(0.05, name="another")],), {}, "copies of one model"),
        (("not a model",), {}, "must be a queuelab LanguageModel"),
        (([a, "not a model"],), {}, "must be a queuelab LanguageModel"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            ql.RequestQueue(*args, **kwargs)


async def test_one_dead_worker_breaks_the_queue_and_settles_everything():
    class Exploding(ql.SequentialScheduler):
        calls = 0

        def select(self, waiting):
            Exploding.calls += 1  # class-wide: every worker's copy counts toward the same limit
            if Exploding.calls > 3:
                raise RuntimeError("scheduler bug")
            return super().select(waiting)

    q = ql.RequestQueue(sim(0.05), workers=3, scheduler=Exploding())
    await q.start()
    reqs = [q.submit(f"p{i}") for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*reqs, return_exceptions=True), 5)
    await q.stop()
    assert q.state == "broken" and not q.stats().health.worker_alive
    assert all(r.status in TERMINAL for r in reqs)
    assert {r.status for r in reqs[3:]} == {S.CANCELLED}
