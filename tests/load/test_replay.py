"""The virtual-time replay against the queue it models: same arrivals, same scheduler, same step costs."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import queuelab as ql
from queuelab.load import replay as rp

COSTS = ql.StepCosts(decode_base_s=0.012, decode_per_seq_s=0.002, prefill_base_s=0.004, prefill_per_token_s=0.0002)
MAKERS = {
    "sequential": ql.SequentialScheduler,
    "static": lambda: ql.StaticBatchScheduler(max_batch=4, max_wait_s=0.02),
    "continuous": lambda: ql.ContinuousBatchScheduler(max_batch=4),
    "adaptive": lambda: ql.AdaptiveBatchScheduler(max_batch=8),
}


def twin() -> ql.SimulatedModel:
    # Answer lengths that differ by prompt, so batches hold short and long answers together.
    return ql.SimulatedModel(step_costs=COSTS, answer_tokens=lambda p: 2 + len(p) % 9)


@pytest.mark.parametrize("name", list(MAKERS))
async def test_replay_matches_the_queue_request_by_request(name):
    model, rate, n = twin(), 12.0, 40
    async with ql.RequestQueue(model, scheduler=MAKERS[name](), max_queue_size=n) as q:
        run = await ql.stress.poisson(q, rate=rate, n=n, seed=5, max_new_tokens=8, progress=False)
    real = run.requests.sort_values("id").reset_index(drop=True)
    # The replay gets the arrivals the queue actually saw (sending lags its schedule by a little).
    seen = [rp.Job(a - real.arrived.min(), int(pt), int(ct), 8)
            for a, pt, ct in zip(real.arrived, real.prompt_tokens, real.completion_tokens)]
    virtual = rp.replay(MAKERS[name](), seen, COSTS)
    assert list(virtual.tokens) == list(real.completion_tokens)
    # Each step of the real run also pays a thread hop and sleep overshoot: a few ms per decision.
    err = (virtual.e2e.to_numpy() - real.e2e.to_numpy())
    assert np.median(np.abs(err)) < 0.03 + 0.1 * real.e2e.median(), err
    assert virtual.e2e.mean() == pytest.approx(real.e2e.mean(), rel=0.2, abs=0.02)
    assert virtual.ttft.mean() == pytest.approx(real.ttft.mean(), rel=0.3, abs=0.03)


def test_sequential_replay_is_the_lindley_recursion():
    js = rp.jobs(twin(), rate=30.0, n=200, seed=1, max_new_tokens=8)
    df = rp.replay(ql.SequentialScheduler(), js, COSTS)
    service = np.array([COSTS.prefill(j.prompt_tokens) + (j.tokens - 1) * COSTS.decode(1) for j in js])
    start, free = np.zeros(len(js)), 0.0
    for i, j in enumerate(js):  # W_{n+1} = max(0, W_n + S_n - A_n), written as start times
        start[i] = max(j.arrival, free)
        free = start[i] + service[i]
    assert df.started.to_numpy() == pytest.approx(start)
    assert df.finished.to_numpy() == pytest.approx(start + service)


def test_continuous_batching_shares_steps_static_batching_waits_for_the_longest():
    # Two requests at t=0: one of 2 tokens, one of 6; then one more at t=0.001.
    js = [rp.Job(0.0, 10, 2, 8), rp.Job(0.0, 10, 6, 8), rp.Job(0.001, 10, 2, 8)]
    static = rp.replay(ql.StaticBatchScheduler(max_batch=2, max_wait_s=0.0), js, COSTS)
    cont = rp.replay(ql.ContinuousBatchScheduler(max_batch=2), js, COSTS)
    # Static: the third request starts only after the 6-token answer ends; continuous: when the 2-token one does.
    assert static.started[2] == pytest.approx(static.finished[1])
    assert cont.started[2] == pytest.approx(cont.finished[0])
    assert cont.finished[2] < static.finished[2]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2), st.integers(0, 50), st.integers(1, 8)), min_size=1, max_size=40),
       st.sampled_from(list(MAKERS)))
def test_every_job_is_served_once_in_causal_order(specs, name):
    js = [rp.Job(a, pt, t, 8) for a, pt, t in specs]
    df = rp.replay(MAKERS[name](), js, COSTS)
    assert sorted(df.id) == list(range(len(js)))
    assert (df.started >= df.arrived).all() and (df.first_token > df.started).all()
    assert (df.finished >= df.first_token).all()
    steps = df.attrs["steps"]
    assert steps.batch_size.max() <= MAKERS[name]().max_batch


def test_sweep_and_goodput():
    runs = rp.sweep(twin(), {k: MAKERS[k] for k in ("sequential", "continuous")}, [2.0, 8.0, 40.0], seeds=(0, 1), n=60,
                    max_new_tokens=[4, 8])
    assert len(runs) == 3 * 2 * 2 and set(runs.scheduler) == {"sequential", "continuous"}
    p99 = runs.groupby(["scheduler", "rate"]).e2e_p99.mean()
    assert p99["continuous", 40.0] < p99["sequential", 40.0]  # overload: batching keeps latency bounded longer
    target = float(p99["sequential", 2.0]) * 1.5
    good = rp.goodput(runs, target_s=target).set_index("scheduler")
    assert good.loc["continuous", "max_rate"] >= good.loc["sequential", "max_rate"]
    table = pd.DataFrame({"scheduler": ["a", "a", "a"], "rate": [1, 2, 3], "e2e_p99": [1.0, 5.0, 1.0]})
    assert rp.goodput(table, target_s=2.0).max_rate[0] == 1  # a later pass after a miss does not count


def test_bad_jobs_are_refused():
    with pytest.raises(ValueError, match="at least one job"):
        rp.replay(ql.SequentialScheduler(), [], COSTS)
    with pytest.raises(ValueError, match="tokens <= max_new_tokens"):
        rp.replay(ql.SequentialScheduler(), [rp.Job(0.0, 3, 9, 8)], COSTS)
    with pytest.raises(ValueError, match="step_costs"):
        rp.sweep(ql.SimulatedModel(0.01), MAKERS, [1.0])


async def test_a_twin_from_one_burst_has_the_real_answer_lengths_and_step_costs(tiny):
    from queuelab.lab.twins import twin_from_burst

    prompts = [p["prompt"] for p in ql.prompts.load_prompts()][:12]
    twin, run = await twin_from_burst(tiny, max_new_tokens=6, max_batch=4, prompts=prompts)
    assert run.summary["succeeded"] == 12 and run.steps.batch_size.max() == 4
    real = dict(zip(run.requests.prompt, run.requests.completion_tokens))
    assert all(twin.answer_length(p, 6) == real[p] for p in prompts)
    assert twin.answer_length("a prompt the burst never saw", 6) == 6
    assert twin.count_tokens(prompts[0]) == tiny.count_tokens(prompts[0])
    sizes = dict(twin.step_costs.decode_table)
    assert 4 in sizes and sizes[4] > 0


async def test_a_linear_fit_recovers_step_costs_from_a_draining_burst():
    truth = ql.StepCosts(decode_base_s=0.006, decode_per_seq_s=0.001, prefill_base_s=0.002, prefill_per_token_s=0.0004)
    engine = ql.SimulatedModel(step_costs=truth, answer_tokens=lambda p: 2 + len(p) % 7)
    async with ql.RequestQueue(engine, scheduler=ql.ContinuousBatchScheduler(max_batch=8)) as q:
        reqs = [q.submit(f"prompt {'with more words ' * (i % 5)}{i}", max_new_tokens=8) for i in range(30)]
        for r in reqs:
            await r
        steps = q.steps()
    twin = ql.SimulatedModel.fitted_to(steps, engine, decode="linear")
    fit = twin.step_costs
    for b in (1, 4, 8):  # sleeps overshoot a little, never undershoot
        assert fit.decode(b) == pytest.approx(truth.decode(b), rel=0.3, abs=0.002)
    assert fit.prefill(20) == pytest.approx(truth.prefill(20), rel=0.3, abs=0.002)
    with pytest.raises(ValueError, match="decode must be"):
        ql.SimulatedModel.fitted_to(steps, engine, decode="cubic")


def test_a_monotone_table_pools_noisy_dips():
    from queuelab.models.calibration import _non_decreasing

    table = ((1, 0.06), (2, 0.15), (4, 0.12), (8, 0.18), (32, 0.17))
    out = _non_decreasing(table, [5, 1, 1, 1, 86])
    values = [v for _, v in out]
    assert values == sorted(values) and [b for b, _ in out] == [1, 2, 4, 8, 32]
    assert values[0] == 0.06 and values[1] == values[2] == pytest.approx(0.135)  # 2 and 4 pooled, equal weights
    assert values[3] == values[4] == pytest.approx((0.18 + 86 * 0.17) / 87)  # one step at 8 yields to 86 at 32
    assert _non_decreasing(((1, 0.1), (2, 0.2)), [1, 1]) == ((1, 0.1), (2, 0.2))  # already monotone: unchanged


def test_a_noisy_prefill_fit_falls_back_to_a_cost_per_token():
    from queuelab.models.calibration import _fit_prefill

    steps = pd.DataFrame({"batch_size": [1, 1, 1, 1], "prefill_tokens": [40, 41, 42, 43],
                          "duration_s": [0.1, 0.1, 0.1, 3.0]})  # one step slowed by a busy machine
    base, per_token = _fit_prefill(steps)
    assert base == 0 and per_token == pytest.approx(0.1 / 41.5, rel=0.05)  # the median step, per token
    clean = pd.DataFrame({"batch_size": [1, 1, 1], "prefill_tokens": [10, 50, 90],
                          "duration_s": [0.02 + 0.001 * n for n in (10, 50, 90)]})
    assert _fit_prefill(clean) == pytest.approx((0.02, 0.001))


def test_prefill_steps_all_alike_give_a_cost_per_token():
    from queuelab.models.calibration import _fit_prefill

    alike = pd.DataFrame({"batch_size": [4, 4, 4], "prefill_tokens": [150, 153, 152], "duration_s": [0.5, 0.45, 0.58]})
    assert _fit_prefill(alike) == pytest.approx((0.0, 1.53 / 455))
