import asyncio
import math

import numpy as np
import pandas as pd
import pytest

import queuelab as ql
from queuelab import stress
from queuelab.prompts import OUTPUT_CLASSES, choose, load_prompts
from tests.conftest import wait_until


def sim(service=0.005, **kw):
    return ql.SimulatedModel(service, **kw)


async def test_incremental_wave_accounting():
    waves_started = []
    done = []
    async with ql.RequestQueue(sim(0.004)) as q:
        run = await stress.incremental(q, waves=[3, 5, 2], max_new_tokens=3, progress=False,
                                       on_wave_start=lambda w, n: waves_started.append((w, n)),
                                       on_request_done=done.append)
    assert waves_started == [(1, 3), (2, 5), (3, 2)] and len(done) == 10
    w = run.waves
    assert list(w.wave) == [1, 2, 3] and list(w.sent) == [3, 5, 2] and list(w.succeeded) == [3, 5, 2]
    assert list(w.peak_queue_depth) == [3, 5, 2]  # a wave lands at once, before the worker takes one
    r = run.requests
    assert list(r.columns[:8]) == ["id", "wave", "scheduled_at", "sent_at", "arrived", "started", "first_token", "finished"]
    for k in (1, 2):  # a wave starts only after the previous one has finished
        assert r[r.wave == k + 1].sent_at.min() >= r[r.wave == k].finished.max()
    assert np.allclose(r.e2e, r.finished - r.arrived) and np.allclose(r.wait, r.started - r.arrived)
    s = run.summary
    assert (s["sent"], s["succeeded"], s["success_rate"], s["completion_tokens"]) == (10, 10, 1.0, 30)
    assert s["req_per_s"] == pytest.approx(10 / (r.finished.max() - r.scheduled_at.min()))
    assert "Total Requests Sent: 10" in run.report() and "Success Rate: 100.0%" in run.report()


async def test_rapid_fire_is_fifo_and_latency_grows_with_position():
    async with ql.RequestQueue(sim(0.004)) as q:
        run = await stress.rapid_fire(q, n=25, max_new_tokens=2, progress=False)
    r = run.requests.sort_values("finished")
    assert list(r.id) == sorted(r.id)
    assert r.e2e.is_monotonic_increasing and r.wait.iloc[-1] > 20 * 0.004 * 0.9
    assert run.summary["peak_queue_depth"] == 25


async def test_burst_spreads_sends_evenly():
    async with ql.RequestQueue(sim(0.001)) as q:
        run = await stress.rapid_fire(q, n=10, burst_s=0.2, max_new_tokens=1, progress=False)
    r = run.requests
    assert np.allclose(r.offset, np.arange(10) * 0.02)
    assert (r.sent_at >= r.scheduled_at).all()


async def test_open_loop_keeps_its_schedule_however_deep_the_queue():
    async with ql.RequestQueue(sim(0.05)) as q:  # 20 req/s capacity, offered 100 req/s
        run = await stress.poisson(q, rate=100, duration=0.5, max_new_tokens=1, progress=False)
        r = run.requests
        assert r.sent_at.max() - r.sent_at.min() < 0.6  # sending was never held up by the model
        assert run.summary["peak_queue_depth"] >= 0.6 * len(r)
        assert (r.status == "completed").all()


async def test_concurrency_keeps_at_most_c_requests_in_flight():
    async with ql.RequestQueue(sim(0.003)) as q:
        run = await stress.concurrency(q, users=3, n=15, max_new_tokens=1, progress=False)
    r = run.requests
    events = sorted([(t, 1) for t in r.arrived] + [(t, -1) for t in r.finished], key=lambda e: (e[0], e[1]))
    in_flight = np.cumsum([d for _, d in events])
    assert len(r) == 15 and in_flight.max() == 3


async def _run_twice(make):
    out = []
    for _ in range(2):
        async with ql.RequestQueue(make()) as q:
            out.append(await stress.poisson(q, rate=200, n=40, seed=5, max_new_tokens=2, progress=False))
    return out


async def test_seeded_runs_reproduce_schedule_prompts_and_outcomes():
    a, b = await _run_twice(lambda: sim(0.002, seed=3, failure_rate=0.3))
    for col in ("offset", "prompt", "status", "completion_tokens", "wave", "error"):
        pd.testing.assert_series_equal(a.requests[col], b.requests[col])
    assert 0 < a.summary["n_failed"] < 40
    async with ql.RequestQueue(sim(0.001)) as q:
        other = await stress.poisson(q, rate=200, n=40, seed=6, max_new_tokens=2, progress=False)
    assert not np.allclose(other.requests.offset, a.requests.offset)


async def test_save_load_round_trip(tmp_path):
    async with ql.RequestQueue(sim(0.003, failure_rate=0.2, seed=1), sample_interval=0.01) as q:
        run = await stress.incremental(q, waves=[4, 6], max_new_tokens=2, progress=False, name="round trip")
    back = ql.StressRun.load(run.save(tmp_path / "runs" / "r.json"))
    for frame in ("requests", "waves", "timeline"):
        pd.testing.assert_frame_equal(getattr(back, frame), getattr(run, frame))
    assert back.config == run.config and back.kind == "incremental" and back.name == "round trip"
    assert back.summary.keys() == run.summary.keys()
    for k, v in run.summary.items():
        assert back.summary[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(back.summary[k]))
    csv = pd.read_csv(run.to_csv(tmp_path / "r.csv"))
    assert len(csv) == 10 and "e2e" in csv.columns


def test_load_refuses_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "something/else"}')
    with pytest.raises(ValueError, match="not a queuelab stress run"):
        ql.StressRun.load(p)


async def test_summaries_puts_runs_side_by_side():
    async with ql.RequestQueue(sim(0.002)) as q:
        a = await stress.rapid_fire(q, n=5, max_new_tokens=1, progress=False, name="a")
        b = await stress.rapid_fire(q, n=8, max_new_tokens=1, progress=False, name="a")
    table = stress.summaries([a, b])
    assert list(table.columns) == ["a", "a (2)"]
    assert table.loc["sent"].tolist() == [5, 8] and "e2e_p99" in table.index


BAD = [
    (stress.incremental, {"waves": []}, "waves"),
    (stress.incremental, {"waves": [3, 0]}, "wave size"),
    (stress.incremental, {"waves": "10"}, "waves"),
    (stress.incremental, {"waves": [2], "wave_timeout": 0}, "wave_timeout"),
    (stress.incremental, {"waves": [2], "pause_s": -1}, "pause_s"),
    (stress.rapid_fire, {"n": 0}, "n must"),
    (stress.rapid_fire, {"n": 5, "burst_s": -1}, "burst_s"),
    (stress.rapid_fire, {"n": 5, "max_new_tokens": 0}, "max_new_tokens"),
    (stress.rapid_fire, {"n": 5, "prompts": []}, "prompts"),
    (stress.poisson, {"rate": 0, "n": 5}, "rate"),
    (stress.poisson, {"rate": 5}, "give duration"),
    (stress.poisson, {"rate": 5, "duration": -1}, "duration"),
    (stress.gamma, {"rate": 5, "n": 5, "burstiness": -1}, "burstiness"),
    (stress.concurrency, {"users": 0, "n": 5}, "users"),
]


@pytest.mark.parametrize("experiment, kwargs, words", BAD)
async def test_bad_arguments_fail_before_anything_is_sent(experiment, kwargs, words):
    async with ql.RequestQueue(sim(0)) as q:
        with pytest.raises(ValueError, match=words):
            await experiment(q, progress=False, **kwargs)
        assert q.stats().submitted == 0


async def test_not_a_target():
    with pytest.raises(ValueError, match="RequestQueue or a stress Target"):
        await stress.rapid_fire("http://nowhere", n=1, progress=False)


async def test_a_stopped_queue_gives_rejected_rows_not_a_hang():
    q = ql.RequestQueue(sim(0))
    await q.start()
    await q.stop()
    run = await asyncio.wait_for(stress.incremental(q, waves=[2, 3], progress=False), 5)
    assert (run.requests.status == "rejected").all() and run.summary["not_succeeded"] == 5
    assert run.summary["errors"] == {"queue is stopped": 5}


async def test_a_queue_stopping_mid_run_accounts_for_every_request():
    q = await ql.RequestQueue(sim(0.01)).start()
    task = asyncio.create_task(stress.incremental(q, waves=[10, 10, 10], max_new_tokens=1, progress=False))
    await wait_until(lambda: q.stats().completed >= 1 and q.queue_size >= 1, what="the first wave to be served")
    await q.stop(drain=False)
    run = await asyncio.wait_for(task, 5)
    counts = run.requests.status.value_counts().to_dict()
    assert len(run.requests) == 30 and counts.get("completed", 0) >= 1
    assert counts.get("cancelled", 0) >= 1 and counts.get("rejected", 0) >= 10
    assert sum(counts.values()) == 30


async def test_full_queue_rejections_count_as_failures_with_reason():
    async with ql.RequestQueue(sim(0.002), max_queue_size=5) as q:
        run = await stress.rapid_fire(q, n=20, max_new_tokens=1, progress=False)
    s = run.summary
    assert (s["succeeded"], s["not_succeeded"], s["n_rejected"]) == (5, 15, 15)
    assert s["success_rate"] == 0.25
    assert list(s["errors"]) == ["queue full: 5 requests waiting (max_queue_size=5)"]


async def test_cancelling_the_experiment_cancels_its_queued_requests():
    async with ql.RequestQueue(sim(0.02)) as q:
        task = asyncio.create_task(stress.rapid_fire(q, n=30, max_new_tokens=1, progress=False))
        await wait_until(lambda: q.stats().submitted == 30 and q.queue_size > 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert q.queue_size == 0 and q.running
        assert (await q.generate("still works", max_new_tokens=1)).completion_tokens == 1
    s = q.stats()
    assert s.cancelled >= 25 and s.submitted == s.completed + s.cancelled == 31


async def test_wave_timeout_cancels_the_rest_of_the_wave():
    async with ql.RequestQueue(sim(0.02)) as q:
        run = await stress.incremental(q, waves=[10, 2], wave_timeout=0.05, max_new_tokens=1, progress=False)
    first = run.requests[run.requests.wave == 1]
    assert 1 <= (first.status == "completed").sum() <= 4
    assert (first.status == "cancelled").sum() >= 6
    assert (run.requests[run.requests.wave == 2].status == "completed").all()


async def test_littles_law_in_the_summary():
    async with ql.RequestQueue(sim(0.01), sample_interval=0.002) as q:
        run = await stress.poisson(q, rate=70, n=250, seed=2, max_new_tokens=1, progress=False)
    assert run.summary["little_ratio"] == pytest.approx(1.0, abs=0.12)


async def test_progress_bar_counts_requests(capsys):
    async with ql.RequestQueue(sim(0)) as q:
        await stress.rapid_fire(q, n=7, max_new_tokens=1, progress=True)
    assert "7/7" in capsys.readouterr().err


def test_prompt_set():
    records = load_prompts()
    assert len(records) >= 100
    assert len({r["prompt"] for r in records}) == len(records)
    assert {r["output"] for r in records} == set(OUTPUT_CLASSES)
    assert len({r["kind"] for r in records}) >= 4
    lengths = [len(r["prompt"]) for r in records]
    assert min(lengths) < 30 and max(lengths) > 200
    rng = lambda: np.random.default_rng(9)  # noqa: E731
    assert choose(20, None, rng()) == choose(20, None, rng())
    assert choose(5, ["a", "b"], rng()) == ["a", "b", "a", "b", "a"]


@pytest.mark.real_model
async def test_short_run_with_the_real_model(real):
    async with ql.RequestQueue(real) as q:
        run = await stress.incremental(q, waves=[2, 3], max_new_tokens=4, progress=False)
    assert run.summary["succeeded"] == 5 and list(run.waves.sent) == [2, 3]
    assert run.summary["tokens_per_s"] > 0 and run.config["target"]["model"]["name"] == "smollm2-135m"
    r = run.requests
    assert (r.first_token > r.started).all() and (r.first_token <= r.finished).all()


async def test_an_open_loop_run_can_mix_short_and_long_answers():
    model = ql.SimulatedModel(0.001)
    async with ql.RequestQueue(model) as q:
        run = await ql.stress.poisson(q, rate=500.0, n=40, seed=3, max_new_tokens=[2, 2, 7], progress=False)
        again = await ql.stress.poisson(q, rate=500.0, n=40, seed=3, max_new_tokens=[2, 2, 7], progress=False)
        with pytest.raises(ValueError, match="max_new_tokens"):
            await ql.stress.poisson(q, rate=500.0, n=4, max_new_tokens=[2, 0], progress=False)
        with pytest.raises(ValueError, match="non-empty list"):
            await ql.stress.poisson(q, rate=500.0, n=4, max_new_tokens=[], progress=False)
    tokens = run.requests.completion_tokens  # the simulated model answers up to its cap
    assert set(tokens) == {2, 7} and (tokens == 2).sum() > (tokens == 7).sum()
    assert list(tokens) == list(again.requests.completion_tokens)  # seeded: the same mix again
    assert run.config["max_new_tokens_choices"] == [2, 2, 7]


async def test_each_scheduler_sends_the_same_load_and_keeps_the_steps(tmp_path):
    model = ql.SimulatedModel(step_costs=ql.StepCosts(decode_base_s=0.002, prefill_base_s=0.001))
    runs = await stress.each_scheduler(model, {"one at a time": ql.SequentialScheduler,
                                               "continuous": lambda: ql.ContinuousBatchScheduler(max_batch=4)},
                                       rate=300.0, n=24, seed=2, max_new_tokens=[2, 6], progress=False)
    seq, cont = runs["one at a time"], runs["continuous"]
    assert (seq.name, cont.name) == ("one at a time", "continuous")
    assert list(seq.requests.prompt) == list(cont.requests.prompt)
    assert seq.requests.offset.tolist() == pytest.approx(cont.requests.offset.tolist())
    decode = cont.steps[cont.steps.decode_tokens > 0]
    assert seq.steps.batch_size.max() == 1 and 1 < decode.batch_size.max() <= 4
    assert seq.steps.decode_tokens.sum() + seq.steps.batch_size[seq.steps.prefill_tokens > 0].sum() == \
        seq.requests.completion_tokens.sum()  # every token came from a logged step
    again = ql.StressRun.load(cont.save(tmp_path / "run.json"))
    pd.testing.assert_frame_equal(again.steps, cont.steps, check_dtype=False)
