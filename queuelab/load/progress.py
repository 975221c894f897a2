"""Live displays of a stress experiment: the `Progress` protocol, a tqdm bar, and `WaveTally`,
the per-wave running figures that the notebook's StressView and the terminal's table both show."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from queuelab.metrics import percentiles
from queuelab.request import Request, RequestStatus


class Progress(Protocol):
    """Told when an experiment starts, of every request sent and done, and when it ends.

    `progress=True` uses a bar (in a notebook, one saved at its final count; elsewhere tqdm's text
    bar); `progress=ql.StressView()` a live per-wave table in a notebook.
    """

    def start(self, total: int | None, desc: str) -> None: ...
    def sent(self, req: Request, wave: int) -> None: ...
    def done(self, req: Request) -> None: ...
    def close(self) -> None: ...


class TqdmProgress:
    """A tqdm.auto bar: a widget in notebooks, a text bar in terminals."""

    def start(self, total: int | None, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="req", leave=True)

    def sent(self, req: Request, wave: int) -> None:
        pass

    def done(self, req: Request) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# The display `progress=True` uses in a Jupyter kernel. The view layer sits above this one, so the
# package root plugs its widget bar in (`use_notebook_bar`) instead of this module importing it.
_notebook_bar: Callable[[], Progress | None] = lambda: None  # noqa: E731


def use_notebook_bar(factory: Callable[[], Progress | None]) -> None:
    """Let `progress=True` use `factory()` when it returns a display (None: fall back to tqdm)."""
    global _notebook_bar
    _notebook_bar = factory


def as_progress(progress: bool | Progress | None) -> Progress | None:
    if progress is True:
        return _notebook_bar() or TqdmProgress()
    if progress is False or progress is None:
        return None
    if all(hasattr(progress, m) for m in ("start", "sent", "done", "close")):
        return progress
    raise ValueError(f"progress must be True, False or a progress display (e.g. ql.StressView()), got {progress!r}")


class WaveTally:
    """Running per-wave counts and latencies while an experiment goes (a Progress without a display)."""

    def __init__(self) -> None:
        self.title, self.closed = "stress run", False
        self.total: int | None = None
        self.waves: dict[int, dict[str, Any]] = {}
        self._wave_of: dict[Request, int] = {}

    def start(self, total: int | None, desc: str) -> None:
        self.title, self.total, self.closed = desc, total, False
        self.waves, self._wave_of = {}, {}

    def sent(self, req: Request, wave: int) -> None:
        w = self.waves.setdefault(wave, {"sent": 0, "completed": 0, "not_completed": 0, "first": req.arrived,
                                         "last": None, "e2e": []})
        w["sent"] += 1
        self._wave_of[req] = wave

    def done(self, req: Request) -> None:
        w = self.waves[self._wave_of.pop(req)]
        ok = req.status is RequestStatus.COMPLETED
        w["completed" if ok else "not_completed"] += 1
        w["last"] = req.finished
        if ok and req.e2e is not None:
            w["e2e"].append(req.e2e)

    def close(self) -> None:
        self.closed = True

    @property
    def done_count(self) -> int:
        return sum(w["completed"] + w["not_completed"] for w in self.waves.values())

    def rows(self) -> list[dict[str, Any]]:
        """wave, sent, done, completed, success_rate, req_per_s, e2e_p50, e2e_p99 so far."""
        out = []
        for k in sorted(self.waves):
            w = self.waves[k]
            done = w["completed"] + w["not_completed"]
            span = (w["last"] - w["first"]) if w["last"] else math.nan
            p = percentiles(w["e2e"])
            out.append({"wave": k, "sent": w["sent"], "done": done, "completed": w["completed"],
                        "success_rate": w["completed"] / done if done else math.nan,
                        "req_per_s": w["completed"] / span if span and span > 0 else math.nan,
                        "e2e_p50": p.p50, "e2e_p99": p.p99})
        return out
