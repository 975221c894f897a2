"""Queueing-theory predictions for a single server, to hold measurements against.

Kendall's notation A/S/1: arrivals A, service times S, one server, FIFO, unlimited queue.
M = Markovian (Poisson arrivals, or exponential service), D = deterministic, G = general.
λ is the arrival rate (requests/s), S the mean service time (s), ρ = λS the utilisation.
All formulas hold in steady state, which exists only when ρ < 1; at ρ ≥ 1 the queue grows without
bound and the predicted waits are infinite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from queuelab.checks import non_negative


@dataclass(frozen=True)
class Prediction:
    """Steady-state means for one queue model. Times in seconds, lengths in requests."""

    model: str
    arrival_rate: float  # λ
    service_time: float  # mean S
    scv: float  # squared coefficient of variation of service time, Var(S)/S²
    utilisation: float  # ρ = λS
    mean_wait: float  # Wq: time queued, before service starts
    mean_response: float  # W = Wq + S: end-to-end
    mean_queue_length: float  # Lq = λ·Wq: requests waiting
    mean_in_system: float  # L = λ·W: waiting plus in service

    @property
    def stable(self) -> bool:
        return self.utilisation < 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(arrival_rate: float, service_time: float, scv: float = 0.0) -> None:
    for name, v in (("arrival_rate", arrival_rate), ("service_time", service_time), ("scv", scv)):
        non_negative(name, v)
    if service_time == 0:
        raise ValueError("service_time must be > 0")


def utilisation(arrival_rate: float, service_time: float) -> float:
    """ρ = λ·S: the fraction of time the server is busy (when ρ < 1)."""
    _check(arrival_rate, service_time)
    return arrival_rate * service_time


def mg1(arrival_rate: float, service_time: float, scv: float) -> Prediction:
    """M/G/1, the Pollaczek–Khinchine formula: Wq = ρ·S·(1 + C²) / (2·(1 − ρ)).

    Assumes Poisson arrivals and independent service times with mean S and squared coefficient
    of variation C² = Var(S)/S²; nothing else about their distribution matters for the mean.
    """
    _check(arrival_rate, service_time, scv)
    rho = arrival_rate * service_time
    wq = rho * service_time * (1 + scv) / (2 * (1 - rho)) if rho < 1 else math.inf
    return _prediction("M/G/1", arrival_rate, service_time, scv, rho, wq)


def mm1(arrival_rate: float, service_time: float) -> Prediction:
    """M/M/1: exponential service (C² = 1), so Wq = ρ·S / (1 − ρ)."""
    return _rename(mg1(arrival_rate, service_time, 1.0), "M/M/1")


def md1(arrival_rate: float, service_time: float) -> Prediction:
    """M/D/1: every request takes exactly S (C² = 0), so Wq = ρ·S / (2·(1 − ρ)): half of M/M/1's."""
    return _rename(mg1(arrival_rate, service_time, 0.0), "M/D/1")


def littles_law(*, L: float | None = None, arrival_rate: float | None = None, W: float | None = None) -> float:
    """L = λ·W, for any stable system in steady state, whatever its distributions. Give two, get the third.

    For the queue alone: Lq = λ·Wq; for the whole system (queue plus server): L = λ·W.
    """
    given = {k: v for k, v in (("L", L), ("arrival_rate", arrival_rate), ("W", W)) if v is not None}
    if len(given) != 2:
        raise ValueError("give exactly two of L, arrival_rate and W")
    if L is None:
        return arrival_rate * W  # type: ignore[operator]
    if W is None:
        if not arrival_rate:
            raise ValueError("arrival_rate must be > 0 to solve for W")
        return L / arrival_rate
    if not W:
        raise ValueError("W must be > 0 to solve for arrival_rate")
    return L / W


def _prediction(model: str, lam: float, s: float, scv: float, rho: float, wq: float) -> Prediction:
    w = wq + s
    return Prediction(model, lam, s, scv, rho, wq, w, lam * wq, lam * w)


def _rename(p: Prediction, model: str) -> Prediction:
    return Prediction(model, *list(asdict(p).values())[1:])
