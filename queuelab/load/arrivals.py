"""When requests are sent: seeded open-loop arrival schedules, as offsets in seconds from the start.

Gaps follow vLLM's serving benchmark: Gamma(shape=burstiness, scale=1/(rate·burstiness)), so the
mean rate is `rate` whatever the burstiness; burstiness 1 is Poisson (exponential gaps), larger is
more regular, smaller is burstier. The first request goes at offset 0.
"""

from __future__ import annotations

import numpy as np

from queuelab.checks import positive, positive_int


def _check_positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    positive(name, value)


def gaps(kind: str, rate: float, count: int, rng: np.random.Generator, burstiness: float = 1.0) -> np.ndarray:
    """`count` inter-arrival gaps for `kind` in {constant, poisson, gamma}."""
    if kind == "constant":
        return np.full(count, 1.0 / rate)
    if kind == "poisson":
        return rng.exponential(1.0 / rate, size=count)
    if kind == "gamma":
        return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    raise ValueError(f"unknown arrival process {kind!r}: use constant, poisson or gamma")


def schedule(kind: str, rate: float, *, duration: float | None = None, n: int | None = None,
             seed: int = 0, burstiness: float = 1.0) -> np.ndarray:
    """Send offsets for an open-loop run: n requests, or as many as fit in `duration`, whichever ends first."""
    _check_positive("rate", rate, allow_none=False)
    _check_positive("duration", duration)
    _check_positive("burstiness", burstiness, allow_none=False)
    if n is not None:
        positive_int("n", n)
    if duration is None and n is None:
        raise ValueError("give duration (seconds) or n (requests), or both: an open-loop run needs an end")
    rng = np.random.default_rng(seed)
    if n is None:
        assert duration is not None
        # Draw generously, then cut at the duration; redraw in the (rare) case we fell short.
        count = max(16, int(rate * duration * 1.5) + 16)
        while True:
            offsets = np.concatenate([[0.0], np.cumsum(gaps(kind, rate, count - 1, rng, burstiness))])
            if offsets[-1] >= duration:
                return offsets[offsets < duration]
            count *= 2
            rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0.0], np.cumsum(gaps(kind, rate, n - 1, rng, burstiness))])
    return offsets if duration is None else offsets[offsets < duration]
