"""`queueing`: the Lindley recursion, virtual-time replicates against the formulas, and real-clock runs."""


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import queuelab as ql
from queuelab import queueing, stress, theory


def test_lindley_by_hand():
    # Three requests a second apart, each served for 2 s: each waits 1 s longer than the one before.
    assert list(queueing.lindley([0, 1, 2], [2, 2, 2])) == [0, 1, 2]
    assert list(queueing.lindley([0, 5], [1, 1])) == [0, 0]  # the server was idle again
    with pytest.raises(ValueError, match="in order"):
        queueing.lindley([1, 0], [1, 1])


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 5)), min_size=1, max_size=40))
def test_lindley_is_a_fifo_server(jobs):
    """Against the server written as start times: each starts when it arrives or when the one before ends."""
    gaps, service = zip(*jobs)
    arrived = np.cumsum(gaps)
    waits = queueing.lindley(arrived, service)
    free = 0.0
    for a, s, w in zip(arrived, service, waits):
        start = max(a, free)
        assert w == pytest.approx(start - a, abs=1e-9)
        free = start + s


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 5), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40))
def test_server_time_moves_the_queue_overhead_from_wait_to_service(jobs):
    """A FIFO run whose worker picks each request up late (a wake-up or a hand-off) and finishes it
    after its service: counted as server time, the run is exactly the Lindley server of its own
    arrivals and service times, and each request's latency is unchanged."""
    gaps, service, pickup, handoff = map(np.array, zip(*jobs))
    arrived, finished, free = np.cumsum(gaps), [], 0.0
    for a, s, late, hand in zip(arrived, service, pickup, handoff):
        free = max(a, free) + late + s + hand
        finished.append(free)
    view = queueing.server_time(arrived[::-1], np.array(finished)[::-1])  # any order in, arrival order out
    assert list(view.arrived) == sorted(arrived)
    assert np.allclose(view.wait + view.service, np.array(finished) - arrived)
    assert np.allclose(queueing.lindley(view.arrived, view.service), view.wait, atol=1e-9)
    assert (view.service.to_numpy() >= service - 1e-9).all() and (view.wait >= 0).all()


def test_server_time_names_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        queueing.server_time([0, 1], [1])
    with pytest.raises(ValueError, match="finished before it arrived"):
        queueing.server_time([0, 2], [1, 1.5])
    with pytest.raises(ValueError, match="completed requests only"):
        queueing.server_time([0, 1], [1, float("nan")])


def test_requests_scale_with_the_relaxation_time():
    assert queueing.requests_for(0.3) == 2000 and queueing.requests_for(0.9) == 10_000
    assert queueing.requests_for(0.999) == 50_000
    with pytest.raises(ValueError, match="stable"):
        queueing.requests_for(1.0)


@pytest.mark.parametrize("service, model, scv", [(ql.Fixed(0.01), theory.md1, 0.0),
                                                 (ql.Exponential(0.01), theory.mm1, 1.0)])
def test_independent_replicates_agree_with_the_formula_on_average(service, model, scv):
    """Deterministic (seeded, no clock): over 30 independent seeds the mean ratio is 1 within a few
    standard errors, while single runs scatter far more than that."""
    rows = queueing.replicate(service, 0.7, seeds=range(30))
    a = queueing.agreement(rows).iloc[0]
    assert a["runs"] == 30 and abs(a["mean ratio"] - 1) < max(0.05, 3 * a["se (mean)"])
    assert a["sd (one run)"] > 2 * a["se (mean)"]  # one run alone is a much rougher estimate
    assert rows["C²"].mean() == pytest.approx(scv, abs=0.1)
    pinned = queueing.replicate(service, 0.7, seeds=range(30), model=model)
    b = queueing.agreement(pinned).iloc[0]
    assert abs(b["mean ratio"] - 1) < max(0.05, 3 * b["se (mean)"])


def test_the_virtual_path_is_what_the_queue_is_sent():
    async def real():
        async with ql.RequestQueue(ql.SimulatedModel(ql.Exponential(0.02), seed=5)) as q:
            return await stress.poisson(q, rate=10, n=12, seed=5, max_new_tokens=1, progress=False)

    run = ql.run(real())
    r = run.requests.sort_values("id")
    p = queueing.path(ql.Exponential(0.02), rho=0.2, n=12, seed=5)  # rate = 0.2 / 0.02 = 10
    # Service times are the model's own draws, plus what the queue adds (never less: sleeps do not end early).
    extra = r.service.to_numpy() - p.service.to_numpy()
    assert (extra > -1e-4).all() and np.median(extra) < 0.01
    # The same schedule (offsets from the first send; a busy loop sends late, so compare the shape).
    assert np.corrcoef(r.arrived.to_numpy(), p.arrived.to_numpy())[0, 1] > 0.99


async def test_a_real_clock_run_is_the_fifo_server_of_its_own_path():
    row = await queueing.measure(lambda seed: ql.SimulatedModel(ql.Fixed(0.003), seed=seed), 0.6, seed=1, n=600,
                                 mean_service=0.003)
    assert row["completed"] == 600 and 0.4 < row["ρ"] < 0.95
    # The queue adds no hidden busy time: its waits are what the run's own arrivals and service times give.
    assert row["wait"] == pytest.approx(row["lindley wait"], rel=0.2, abs=3e-4)
    # Counted as server time, the overhead leaves waits no longer and service no shorter than the stamps'.
    assert row["server wait"] <= row["wait"] and row["server S"] >= row["S"] and row["server ρ"] >= row["ρ"]
    assert row["little L (sampled)"] == pytest.approx(row["λ·W"], rel=0.5, abs=0.2)
