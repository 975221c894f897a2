import math

import numpy as np
import pytest

import queuelab as ql
from queuelab import stress, theory
from queuelab.lab.queueing import lindley


def test_hand_computed_values():
    # λ = 4/s, S = 0.2 s: ρ = 0.8
    mm1 = theory.mm1(4, 0.2)
    assert mm1.utilisation == pytest.approx(0.8)
    assert mm1.mean_wait == pytest.approx(0.8)          # ρS/(1-ρ) = 0.16/0.2
    assert mm1.mean_response == pytest.approx(1.0)      # 1/(μ-λ) = 1/(5-4)
    assert mm1.mean_queue_length == pytest.approx(3.2)  # ρ²/(1-ρ)
    assert mm1.mean_in_system == pytest.approx(4.0)     # ρ/(1-ρ)
    md1 = theory.md1(4, 0.2)
    assert md1.mean_wait == pytest.approx(0.4) and md1.mean_queue_length == pytest.approx(1.6)
    # λ = 1/s, S = 0.5 s, C² = 0.25: Wq = 0.5·0.5·1.25/(2·0.5) = 0.3125
    assert theory.mg1(1, 0.5, 0.25).mean_wait == pytest.approx(0.3125)


def test_mg1_spans_md1_and_mm1():
    assert theory.mg1(3, 0.1, 0).mean_wait == theory.md1(3, 0.1).mean_wait
    assert theory.mg1(3, 0.1, 1).mean_wait == theory.mm1(3, 0.1).mean_wait
    assert theory.md1(3, 0.1).model == "M/D/1" and theory.mm1(3, 0.1).model == "M/M/1"


def test_unstable_queue_waits_forever():
    p = theory.mm1(10, 0.1)
    assert not p.stable and math.isinf(p.mean_wait) and math.isinf(p.mean_queue_length)


def test_littles_law_solves_for_the_missing_one():
    assert theory.littles_law(arrival_rate=4, W=0.5) == 2
    assert theory.littles_law(L=2, arrival_rate=4) == 0.5
    assert theory.littles_law(L=2, W=0.5) == 4
    with pytest.raises(ValueError, match="exactly two"):
        theory.littles_law(L=1)


@pytest.mark.parametrize("args", [(-1, 0.1), (1, 0), (1, float("nan")), ("1", 0.1)])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        theory.mm1(*args)


@pytest.mark.parametrize("service, predict", [(ql.Fixed(0.004), theory.md1), (ql.Exponential(0.004), theory.mm1)])
def test_the_formulas_match_a_replay_in_virtual_time(service, predict):
    """Theory against the exact recursion on seeded schedules: no clock, no machine noise."""
    import random

    rng = np.random.default_rng(4)
    lam, n = 0.6 / 0.004, 20_000
    arrived = np.cumsum(rng.exponential(1 / lam, n))
    draws = random.Random(4)
    s = np.array([service.sample(draws, 1) for _ in range(n)])
    waits = lindley(arrived, s)[n // 10:]  # past the warm-up from an empty queue
    assert waits.mean() == pytest.approx(predict(lam, 0.004).mean_wait, rel=0.1)


@pytest.mark.parametrize("service", [ql.Fixed(0.004), ql.Exponential(0.004)])
async def test_the_queue_behaves_as_the_fifo_server_of_the_theory(service):
    """A real-clock run through the queue: its waits are what a FIFO single server gives with the
    arrivals and service times the run itself measured, however busy the machine was. A request's
    service runs until the loop hands its answer over, so no busy time hides between services."""
    async with ql.RequestQueue(ql.SimulatedModel(service, seed=4), max_queue_size=10_000) as q:
        run = await stress.poisson(q, rate=0.6 / 0.004, n=1500, seed=4, max_new_tokens=1, progress=False)
    r = run.requests.sort_values("started")
    busy_gap = (r.started.shift(-1) - r.finished)[r.arrived.shift(-1) < r.finished]
    assert busy_gap.median() < 0.1 * r.service.median()  # the worker takes the next at once
    replay = lindley(r.arrived.to_numpy(), r.service.to_numpy())
    assert r.wait.mean() == pytest.approx(replay.mean(), rel=0.15, abs=2e-4)
    assert np.corrcoef(r.wait, replay)[0, 1] > 0.9  # request by request, not only on average
