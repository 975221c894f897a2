"""Queueing theory, checked: the formulas of `theory` against waits measured two ways.

- **In virtual time** (`lindley`, `replicate`): a single FIFO server is fully described by its
  arrival times and service times; each request's wait follows from the one before it (the Lindley
  recursion, Wq[n+1] = max(0, Wq[n] + S[n] − gap[n+1])). No clock, no model: thousands of
  independent replicates in milliseconds, so a learner sees how far one run of n requests may
  honestly land from the formula.
- **On the real clock** (`measure`): Poisson arrivals through an actual `RequestQueue`, the same
  seeded schedule `stress.poisson` sends; the prediction is computed from what the run itself
  measured (its arrival rate, its service times' mean and spread), never from what was configured.

Agreement is a ratio, measured wait ÷ predicted wait, and it is reported with its spread over
independent seeds (`agreement`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from queuelab.checks import positive, positive_int
from queuelab.lab import theory
from queuelab.load import arrivals
from queuelab.models.simulated import ServiceTime


class Empirical:
    """A service-time distribution that draws from measured service times (a bootstrap): replicates
    of a real model's queue without running the model."""

    def __init__(self, seconds: Iterable[float]) -> None:
        self.values = [float(v) for v in seconds]
        if not self.values or min(self.values) <= 0:
            raise ValueError("Empirical needs at least one service time, all > 0")
        self._mean = float(np.mean(self.values))
        self._scv = float(np.var(self.values) / self._mean**2)

    def sample(self, rng: random.Random, tokens: int) -> float:
        return rng.choice(self.values)

    def mean(self, tokens: int) -> float:
        return self._mean

    def scv(self, tokens: int) -> float:
        return self._scv

    def __repr__(self) -> str:
        return f"Empirical({len(self.values)} service times, mean {self._mean:.3g} s, C² {self._scv:.2f})"


def lindley(arrived: Iterable[float], service: Iterable[float]) -> np.ndarray:
    """Each request's wait in a FIFO single-server queue, from arrival times and service times (seconds)."""
    a, s = np.asarray(list(arrived), float), np.asarray(list(service), float)
    if a.shape != s.shape:
        raise ValueError(f"arrived and service differ in length ({a.size} vs {s.size})")
    if a.size and np.any(np.diff(a) < 0):
        raise ValueError("arrival times must be in order")
    waits, w = [0.0] * a.size, 0.0
    gaps, served = np.diff(a).tolist(), s.tolist()  # plain floats: ~10x faster in the loop than numpy scalars
    for i, gap in enumerate(gaps, start=1):
        w = max(0.0, w + served[i - 1] - gap)
        waits[i] = w
    return np.array(waits)


def server_time(arrived: Any, finished: Any) -> pd.DataFrame:
    """A sequential run's waits and service times as queueing theory's server counts them.

    The queue stamps a request's wait until its worker picks it up; the theory's server has no
    worker to wake and no bookkeeping between requests. Here each request's service starts when the
    server became free for it, max(its arrival, the previous request's finish), and ends at its own
    finish: the idle worker's wake-up and the hand-off between requests become server time, spent
    on that request. Latency (finish − arrival) is unchanged; only the split moves. In arrival order.
    """
    a, f = np.asarray(arrived, float), np.asarray(finished, float)
    if a.shape != f.shape:
        raise ValueError(f"arrived and finished differ in length ({a.size} vs {f.size})")
    order = np.lexsort((f, a))  # by arrival; requests arriving together were served in finishing order
    a, f = a[order], f[order]
    if np.isnan(a).any() or np.isnan(f).any():
        raise ValueError("arrived and finished need a time for every request: pass completed requests only")
    if np.any(f < a):
        raise ValueError("a request finished before it arrived")
    free = np.concatenate([[-np.inf], np.maximum.accumulate(f)[:-1]])  # when the server became free for each
    begun = np.maximum(a, free)
    return pd.DataFrame({"arrived": a, "wait": begun - a, "service": f - begun})


def requests_for(rho: float, *, base: float = 100.0, low: int = 2000, high: int = 50_000) -> int:
    """Requests a run at load ρ needs to be near steady state: ∝ 1/(1 − ρ)², clipped to [low, high].

    The relaxation time of a single-server queue grows like 1/(1 − ρ)², so a fixed n that is ample
    at ρ = 0.3 is mostly warm-up at ρ = 0.95.
    """
    if not 0 < rho < 1:
        raise ValueError(f"rho must be between 0 and 1 (a stable queue), got {rho!r}")
    return int(min(high, max(low, base / (1 - rho) ** 2)))


def path(service: ServiceTime, rho: float, n: int, seed: int) -> pd.DataFrame:
    """The arrivals and service times that `stress.poisson(queue, rate=ρ/E[S], n=n, seed=seed)` on
    `SimulatedModel(service, seed=seed)` meets: same offsets, same service draws, in virtual time."""
    positive_int("n", n)
    mean = service.mean(1)
    offsets = arrivals.schedule("poisson", rho / mean, n=n, seed=seed)
    rng = random.Random(seed)
    draws = []
    for _ in range(n):
        rng.random()  # the model's failure draw, made for every request (see SimulatedModel)
        draws.append(service.sample(rng, 1))
    return pd.DataFrame({"arrived": offsets, "service": draws})


def predicted(arrived: Any, service: Any, model: Callable[..., theory.Prediction] | None = None) -> theory.Prediction:
    """The formula's prediction from a run's own measurements: its arrival rate and service moments.

    `model` defaults to M/G/1 with the measured C²; pass `theory.md1` or `theory.mm1` to impose one.
    """
    a, s = np.asarray(arrived, float), np.asarray(service, float)
    lam = (a.size - 1) / (a.max() - a.min())
    mean = float(s.mean())
    if model is None:
        return theory.mg1(lam, mean, float(s.var() / mean**2))
    return model(lam, mean)


def replicate(service: ServiceTime, rho: float, *, seeds: Iterable[int] = range(20), n: int | None = None,
              model: Callable[..., theory.Prediction] | None = None) -> pd.DataFrame:
    """Independent virtual-time runs at load ρ: per seed, the measured ρ, mean wait, the prediction
    from that run's own arrival rate and service moments, and their ratio."""
    n = n or requests_for(rho)
    rows = []
    for seed in seeds:
        p = path(service, rho, n, seed)
        rows.append(_row(rho, seed, n, p.arrived, p.service, lindley(p.arrived, p.service), model))
    return pd.DataFrame(rows)


async def effective_service(make_model: Callable[[int], Any], n: int = 100, *, seed: int = 0, **options: Any) -> float:
    """A model's mean service time as the queue serves it, from `n` requests sent one after another
    by one user: what to aim a load ρ with, since a configured 5 ms is served in a little more.

    Counted as the server's time (`server_time`): the worker's wake-up, the thread hop and the
    bookkeeping are all in it, as they are in the server's occupancy under load.
    """
    from queuelab.engine.request_queue import RequestQueue
    from queuelab.load import stress

    async with RequestQueue(make_model(seed), max_queue_size=max(1000, n)) as q:
        run = await stress.concurrency(q, users=1, n=n, seed=seed, progress=False, **{"max_new_tokens": 1, **options})
    return float(server_time(run.requests.arrived, run.requests.finished).service.mean())


async def measure(make_model: Callable[[int], Any], rho: float, *, seed: int, n: int | None = None,
                  mean_service: float, model: Callable[..., theory.Prediction] | None = None,
                  **poisson: Any) -> dict[str, Any]:
    """One real-clock run: Poisson arrivals at ρ / `mean_service` through a fresh `RequestQueue` on
    `make_model(seed)`; the row `replicate` gives, plus Little's law as the run's timeline ticker saw it and
    the waits the Lindley recursion gives for the run's own arrivals and services (how much of any
    gap from the formula is this path's randomness, and how much the queue's overhead), and the
    same comparison with that overhead counted as server time (`server S`, `server ρ`,
    `server wait`, `server ratio`; see `server_time`)."""
    from queuelab.engine.request_queue import RequestQueue
    from queuelab.load import stress

    positive("mean_service", mean_service)
    n = n or requests_for(rho)
    options = {"max_new_tokens": 1, **poisson}
    async with RequestQueue(make_model(seed), max_queue_size=max(1000, n),
                            sample_interval=min(0.25, max(0.002, mean_service))) as q:
        run = await stress.poisson(q, rate=rho / mean_service, n=n, seed=seed, progress=False, **options)
    r = run.requests.sort_values("arrived")
    row = _row(rho, seed, n, r.arrived, r.service, r.wait, model)
    row["lindley wait"] = float(lindley(r.arrived, r.service).mean())
    # What the formula leaves out: the idle worker's wake-up, paid by each request that finds it idle.
    idle = r.arrived >= r.finished.shift(1).cummax().fillna(-math.inf)
    row["dispatch"] = float(r.wait[idle].mean()) if idle.any() else math.nan
    # The same run with that wake-up and the hand-offs counted as the server's time (`server_time`).
    server = server_time(r.arrived, r.finished)
    theirs = predicted(server.arrived, server.service, model)
    row["server S"], row["server ρ"], row["server wait"] = theirs.service_time, theirs.utilisation, float(server.wait.mean())
    row["server ratio"] = row["server wait"] / theirs.mean_wait if theirs.mean_wait > 0 else math.nan
    row["little L (sampled)"], row["λ·W"] = run.summary["little_L"], run.summary["little_lambda_W"]
    row["completed"] = int(run.summary["n_completed"])
    return row


def _row(rho: float, seed: int, n: int, arrived: Any, service: Any, waits: Any,
         model: Callable[..., theory.Prediction] | None) -> dict[str, Any]:
    p = predicted(arrived, service, model)
    wait = float(np.mean(waits))
    return {"target ρ": rho, "seed": seed, "n": n, "ρ": p.utilisation, "S": p.service_time, "C²": p.scv, "wait": wait,
            "predicted": p.mean_wait, "ratio": wait / p.mean_wait if p.mean_wait > 0 else math.nan}


def agreement(rows: pd.DataFrame, by: str = "target ρ") -> pd.DataFrame:
    """Per load: runs, mean of measured ÷ predicted, its standard deviation (one run's spread), and
    the standard error of the mean over seeds."""
    g = rows.groupby(by)["ratio"]
    out = pd.DataFrame({"runs": g.size(), "ρ measured": rows.groupby(by)["ρ"].mean(), "mean ratio": g.mean(),
                        "sd (one run)": g.std(ddof=1), "min": g.min(), "max": g.max()})
    out["se (mean)"] = out["sd (one run)"] / np.sqrt(out["runs"])
    return out


__all__ = ["Empirical", "lindley", "server_time", "requests_for", "path", "predicted", "replicate", "effective_service", "measure", "agreement"]
