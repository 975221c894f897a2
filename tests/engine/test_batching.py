"""The step engine through the queue: batched answers equal single ones, every request keeps its own
parameters, limits hold, faults fail only their step, and observers see the batch."""

import asyncio
from unittest import mock

import pytest

import queuelab as ql
from queuelab import RequestStatus as S
from queuelab.prompts import load_prompts

SCHEDULERS = [
    ql.SequentialScheduler,
    lambda: ql.StaticBatchScheduler(max_batch=8, max_wait_s=0.01),
    lambda: ql.LengthGroupedScheduler(max_batch=8, max_wait_s=0.01),
    lambda: ql.ContinuousBatchScheduler(max_batch=16),
    lambda: ql.AdaptiveBatchScheduler(max_batch=16),
]
IDS = ["sequential", "static", "length-grouped", "continuous", "adaptive"]


async def serve_all(model, scheduler, prompts, **kw):
    async with ql.RequestQueue(model, scheduler=scheduler, max_queue_size=len(prompts) + 1) as q:
        reqs = [q.submit(p, **kw) for p in prompts]
        await asyncio.gather(*reqs)
        return reqs, q.steps()


@pytest.mark.parametrize("make", SCHEDULERS, ids=IDS)
async def test_greedy_answers_equal_generate_alone_on_the_whole_prompt_set(tiny_each_cache, make):
    tiny = tiny_each_cache
    prompts = [p["prompt"] for p in load_prompts()]
    alone = [tiny.generate(p, max_new_tokens=12) for p in prompts]
    reqs, steps = await serve_all(tiny, make(), prompts, max_new_tokens=12)
    assert [r.completion.text for r in reqs] == [c.text for c in alone]
    assert [r.completion.completion_tokens for r in reqs] == [c.completion_tokens for c in alone]
    assert [r.completion.finish_reason for r in reqs] == [c.finish_reason for c in alone]
    assert steps.batch_size.max() <= make().max_batch


@pytest.mark.real_model
@pytest.mark.parametrize("kv_cache", ["paged", "padded"])
async def test_real_model_greedy_answers_equal_generate_alone_under_continuous_batching(real, kv_cache):
    # 32 prompts of mixed length (every third of the set: questions, instructions, stories, code), all at
    # once: one batched prefill of 32 (paged: one ragged forward pass), then batched decodes.
    model = real if real.kv_cache == kv_cache else ql.load_model(kv_cache=kv_cache)
    prompts = [p["prompt"] for p in load_prompts()][::3][:32]
    alone = [model.generate(p, max_new_tokens=16) for p in prompts]
    reqs, steps = await serve_all(model, ql.ContinuousBatchScheduler(max_batch=32), prompts, max_new_tokens=16)
    assert [r.completion.text for r in reqs] == [c.text for c in alone]
    assert steps.batch_size.max() == 32
    if kv_cache == "paged":
        assert steps.pad_tokens.max() == 0 and steps.prefill_tokens.max() == sum(r.prompt_tokens for r in reqs)
    else:
        assert steps.pad_tokens.max() > 0  # rows of different lengths, left-padded


async def test_every_request_keeps_its_own_parameters_inside_one_batch(tiny_each_cache):
    tiny = tiny_each_cache
    prompt = "Tell me about queues."
    kinds = [dict(max_new_tokens=3), dict(max_new_tokens=9), dict(max_new_tokens=9, temperature=1.2, seed=1),
             dict(max_new_tokens=9, temperature=1.2, seed=2), dict(max_new_tokens=9, temperature=1.2, seed=1)]
    alone = [tiny.generate(prompt, **k) for k in kinds]
    async with ql.RequestQueue(tiny, scheduler=ql.StaticBatchScheduler(max_batch=8, max_wait_s=1)) as q:
        reqs = [q.submit(prompt, stream=i % 2 == 0, **k) for i, k in enumerate(kinds)]
        streamed = {i: "".join([p async for p in reqs[i].stream()]) for i in (0, 2, 4)}
        await asyncio.gather(*reqs)
    assert len({r.started for r in reqs}) == 1  # one batch
    assert [r.completion.text for r in reqs] == [c.text for c in alone]
    assert [r.completion.completion_tokens for r in reqs] == [3, 9, 9, 9, 9]
    assert reqs[2].completion.text == reqs[4].completion.text != reqs[3].completion.text  # seeds, not positions
    assert all(streamed[i] == reqs[i].completion.text for i in streamed)
    assert reqs[0].finished < reqs[1].finished  # the short one completed when it ended, not with the batch


async def test_a_request_that_stops_at_eos_leaves_the_batch(tiny_each_cache):
    tiny = tiny_each_cache
    pick = lambda seqs, logits, eos_id: [eos_id if s.prompt == "stop" else 42 for s in seqs]
    with mock.patch("queuelab.models.kv_cache.pick_tokens", pick), \
            mock.patch("queuelab.models.paged_kv_cache.pick_tokens", pick):
        reqs, steps = await serve_all(tiny, ql.ContinuousBatchScheduler(max_batch=4), ["go", "stop", "go"],
                                      max_new_tokens=5)
    assert [(r.completion.completion_tokens, r.completion.finish_reason) for r in reqs] == [
        (5, "length"), (1, "stop"), (5, "length")]
    assert reqs[1].completion.text == ""
    assert set(steps.loc[steps.decode_tokens > 0, "batch_size"]) == {2}  # decoded without it


async def test_continuous_batching_admits_arrivals_between_decode_steps_in_order():
    model = ql.SimulatedModel(step_costs=ql.StepCosts(decode_base_s=0.004))
    async with ql.RequestQueue(model, scheduler=ql.ContinuousBatchScheduler(max_batch=3)) as q:
        first = q.submit("long one", max_new_tokens=40)
        while first.status is not S.PROCESSING or first.tokens_streamed < 3:
            await asyncio.sleep(0.002)
        later = [q.submit(f"later {i}", max_new_tokens=5) for i in range(4)]
        await asyncio.gather(first, *later)
        steps = q.steps()
    assert all(r.started < first.finished for r in later[:2])  # joined the running batch
    assert later[2].started >= min(r.finished for r in later[:2])  # waited for a free seat
    order = sorted([first, *later], key=lambda r: r.started)
    assert [r.id for r in order] == sorted(r.id for r in order)
    assert steps.batch_size.max() == 3


async def test_static_batching_admits_nothing_while_a_batch_runs():
    model = ql.SimulatedModel(step_costs=ql.StepCosts(decode_base_s=0.002))
    async with ql.RequestQueue(model, scheduler=ql.StaticBatchScheduler(max_batch=4, max_wait_s=0)) as q:
        reqs = [q.submit(f"p{i}", max_new_tokens=n) for i, n in enumerate([20, 2, 2, 2])]
        await asyncio.sleep(0)
        more = [q.submit(f"q{i}", max_new_tokens=2) for i in range(3)]
        await asyncio.gather(*reqs, *more)
    batches = {}
    for r in reqs + more:
        batches.setdefault(r.started, []).append(r)
    assert len(batches) >= 2
    spans = sorted((min(r.started for r in b), max(r.finished for r in b)) for b in batches.values())
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))


async def test_a_fault_in_a_batched_decode_fails_that_step_and_the_queue_goes_on(tiny_each_cache):
    tiny = tiny_each_cache
    batch_class = type(tiny.new_batch())
    real_decode = batch_class._decode
    calls = {"n": 0}

    def flaky(self, seqs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return real_decode(self, seqs)

    with mock.patch.object(batch_class, "_decode", flaky):
        async with ql.RequestQueue(tiny, scheduler=ql.ContinuousBatchScheduler(max_batch=4)) as q:
            first = [q.submit(f"first {i}", max_new_tokens=8) for i in range(3)]
            await asyncio.gather(*first, return_exceptions=True)
            after = await q.generate("after the fault", max_new_tokens=4)
    assert [r.status for r in first] == [S.FAILED] * 3
    assert all("out of memory" in r.error for r in first)
    assert after.completion_tokens >= 1 and q.stats().failed == 3


async def test_a_fault_in_prefill_fails_only_the_joining_requests():
    model = ql.SimulatedModel(step_costs=ql.StepCosts(decode_base_s=0.003), fail_if=lambda p: "boom" in p)
    async with ql.RequestQueue(model, scheduler=ql.ContinuousBatchScheduler(max_batch=4)) as q:
        ok = q.submit("fine", max_new_tokens=30)
        while ok.tokens_streamed < 2:
            await asyncio.sleep(0.002)
        bad = q.submit("boom", max_new_tokens=3)
        await asyncio.gather(ok, bad, return_exceptions=True)
    assert (ok.status, bad.status) == (S.COMPLETED, S.FAILED) and "SimulatedFailure" in bad.error


async def test_observers_see_the_whole_batch():
    from queuelab.observe import panels

    model = ql.SimulatedModel(step_costs=ql.StepCosts(decode_base_s=0.005))
    async with ql.RequestQueue(model, scheduler=ql.ContinuousBatchScheduler(max_batch=4)) as q:
        reqs = [q.submit(f"prompt {i}", max_new_tokens=30) for i in range(6)]
        while q.processing < 4:
            await asyncio.sleep(0.002)
        s = q.stats()
        await asyncio.gather(*reqs)
        steps = q.steps()
    assert (s.processing, s.queue_size) == (4, 2)
    assert [a.id for a in s.active] == [1, 2, 3, 4]
    rows = panels.active_rows(s.as_dict())
    assert rows[0] == ("Batch", "4 requests running") and [r[0] for r in rows[1:]] == ["#1", "#2", "#3", "#4"]
    assert list(steps.columns) == ["t", "elapsed", "batch_size", "prefill_tokens", "decode_tokens", "duration_s",
                                   "kv_tokens", "pad_tokens", "kv_blocks"]
    assert steps.decode_tokens.sum() + (steps.prefill_tokens > 0).sum() >= 6 * 30 - 6
    assert steps.batch_size.max() == 4 and (steps.t.diff().dropna() > 0).all()


async def test_a_scheduler_that_never_runs_anything_breaks_the_queue_loudly():
    class Stubborn(ql.Scheduler):
        def schedule(self, waiting, running, now):
            return ql.Wait()

    q = await ql.RequestQueue(ql.SimulatedModel(0.001), scheduler=Stubborn()).start()
    req = q.submit("anyone there?")
    with pytest.raises(ql.RequestCancelled, match="waits forever"):
        await asyncio.wait_for(req, 2)
    assert q.state == "broken"
    await q.stop()


def test_simulated_step_costs_follow_the_batch_size():
    costs = ql.StepCosts(decode_base_s=0.01, decode_per_seq_s=0.002, prefill_per_token_s=0.001)
    assert costs.decode(1) == pytest.approx(0.012) and costs.decode(8) == pytest.approx(0.026)
    table = ql.StepCosts(decode_base_s=0, decode_table=((1, 0.05), (4, 0.08), (16, 0.2)))
    assert table.decode(2) == pytest.approx(0.06) and table.decode(32) == pytest.approx(0.36)
    model = ql.SimulatedModel(step_costs=costs)
    batch = model.new_batch()
    seqs = [model.new_sequence(f"a prompt of words {i}", ql.GenerationParams(max_new_tokens=3)) for i in range(4)]
    info = batch.prefill(seqs)
    assert info.prefill_tokens == 20 and info.duration_s >= 0.02
    info = batch.decode()
    assert info.batch_size == 4 and info.duration_s >= 0.018


def test_bad_step_costs_are_named():
    with pytest.raises(ValueError, match="decode_per_seq_s"):
        ql.StepCosts(decode_base_s=0.01, decode_per_seq_s=-1)
    with pytest.raises(ValueError, match="sorted"):
        ql.StepCosts(decode_base_s=0, decode_table=((4, 0.1), (1, 0.05)))
    with pytest.raises(ValueError, match="not both"):
        ql.SimulatedModel(0.1, step_costs=ql.StepCosts(decode_base_s=0.01))


def test_calibrated_twin_has_the_real_models_step_costs(tiny):
    twin = ql.SimulatedModel.calibrated_from(tiny, batch_sizes=(1, 4), steps=3)
    cal = twin.calibration
    assert [b for b, _ in cal.decode_table] == [1, 4]
    assert twin.step_costs.decode(4) == pytest.approx(cal.decode_table[1][1])
    assert twin.count_tokens("What is a queue?") == tiny.count_tokens("What is a queue?")
    c = twin.generate("What is a queue?", max_new_tokens=4)
    assert c.duration_s >= twin.step_costs.prefill(c.prompt_tokens) + 3 * twin.step_costs.decode(1) * 0.99


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
async def test_continuous_batching_on_cuda_in_bf16():
    gpu = ql.load_model("tiny-random", device="cuda", dtype="bfloat16")
    assert (gpu.info()["device"].startswith("cuda"), gpu.info()["dtype"]) == (True, "bfloat16")
    prompts = [p["prompt"] for p in load_prompts()][:24]
    reqs, steps = await serve_all(gpu, ql.ContinuousBatchScheduler(max_batch=8), prompts, max_new_tokens=8,
                                  temperature=0.7, seed=3)
    assert all(r.status is S.COMPLETED and r.completion.completion_tokens >= 1 for r in reqs)
    assert steps.batch_size.max() == 8
    greedy = await serve_all(gpu, ql.ContinuousBatchScheduler(max_batch=8), prompts[:4], max_new_tokens=8)
    assert all(r.completion.completion_tokens >= 1 for r in greedy[0])


async def test_a_twin_fitted_to_a_run_recovers_its_step_costs():
    truth = ql.StepCosts(decode_base_s=0.01, decode_per_seq_s=0.002, prefill_per_token_s=0.001)
    engine = ql.SimulatedModel(step_costs=truth)
    reqs, steps = await serve_all(engine, ql.ContinuousBatchScheduler(max_batch=4),
                                  [f"prompt with some words {i}" for i in range(12)], max_new_tokens=6)
    twin = ql.SimulatedModel.fitted_to(steps, engine)
    for b, measured in twin.calibration.decode_table:
        assert measured == pytest.approx(truth.decode(b), rel=0.3, abs=0.002)  # sleeps overshoot a little
    assert twin.step_costs.prefill(10) == pytest.approx(truth.prefill(10), rel=0.3, abs=0.002)
    with pytest.raises(ValueError, match="no batch size"):
        ql.SimulatedModel.fitted_to(steps.iloc[:0], engine)


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 5e-324])
async def test_a_tiny_temperature_is_greedy_and_harms_no_neighbour(tiny_each_cache, temperature):
    # Dividing logits by 5e-324 overflows; sampled that way the softmax is NaN and the whole step
    # fails. Below 1e-5 a request is greedy, the limit of sampling as the temperature goes to 0.
    tiny = tiny_each_cache
    prompts = ["first neighbour", "the tiny one", "second neighbour"]
    alone = [tiny.generate(p, max_new_tokens=6) for p in prompts]
    async with ql.RequestQueue(tiny, scheduler=ql.ContinuousBatchScheduler(max_batch=4)) as q:
        reqs = [q.submit(p, max_new_tokens=6, temperature=temperature if i == 1 else 0.0, seed=1)
                for i, p in enumerate(prompts)]
        await asyncio.gather(*reqs, return_exceptions=True)
    assert [r.status for r in reqs] == [S.COMPLETED] * 3
    assert [r.completion.text for r in reqs] == [c.text for c in alone]
