import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuelab.load import arrivals


def cv(offsets):
    g = np.diff(offsets)
    return g.std() / g.mean()


def test_poisson_rate_and_cv():
    off = arrivals.schedule("poisson", 50.0, n=20_000, seed=1)
    assert off[0] == 0 and np.all(np.diff(off) >= 0)
    assert (len(off) - 1) / off[-1] == pytest.approx(50.0, rel=0.03)
    assert cv(off) == pytest.approx(1.0, abs=0.05)


def test_constant_is_regular():
    off = arrivals.schedule("constant", 4.0, n=9)
    assert np.allclose(off, np.arange(9) * 0.25) and cv(off) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0, 100.0])
def test_gamma_keeps_the_rate_and_sets_the_burstiness(burstiness):
    off = arrivals.schedule("gamma", 20.0, n=20_000, seed=2, burstiness=burstiness)
    assert (len(off) - 1) / off[-1] == pytest.approx(20.0, rel=0.05)
    assert cv(off) == pytest.approx(1 / np.sqrt(burstiness), rel=0.06)  # CV of Gamma(k) is 1/sqrt(k)


def test_duration_cuts_the_schedule():
    off = arrivals.schedule("poisson", 100.0, duration=3.0, seed=0)
    assert off.max() < 3.0 and 240 < len(off) < 360
    both = arrivals.schedule("poisson", 100.0, duration=3.0, n=50, seed=0)
    assert len(both) == 50 and np.array_equal(both, arrivals.schedule("poisson", 100.0, n=50, seed=0))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["poisson", "constant", "gamma"]), st.floats(0.5, 500), st.integers(1, 300), st.integers(0, 99))
def test_same_seed_same_schedule(kind, rate, n, seed):
    a = arrivals.schedule(kind, rate, n=n, seed=seed, burstiness=2.0)
    assert len(a) == n and np.array_equal(a, arrivals.schedule(kind, rate, n=n, seed=seed, burstiness=2.0))


@pytest.mark.parametrize("kwargs, words", [
    ({"rate": 0, "n": 5}, "rate"), ({"rate": -1, "n": 5}, "rate"), ({"rate": 1}, "give duration"),
    ({"rate": 1, "n": 0}, "n must"), ({"rate": 1, "duration": -2}, "duration"), ({"rate": 1, "n": 3, "burstiness": 0}, "burstiness"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        arrivals.schedule("poisson", **kwargs)
