"""Replay a scheduler in virtual time: the queue's step loop, with step costs instead of a model.

A load sweep through the real queue runs in real time: twenty loads × three seeds × three schedulers
of a two-minute run is two hours. `replay` drives the *same* `Scheduler` objects through the same
loop as `RequestQueue` + `StepRunner` — ask the scheduler, run the step, keep decoding until a
request finishes (or, for schedulers that admit while running, until one arrives), ask again — but
each step advances a virtual clock by what `StepCosts` says it costs, so a run takes milliseconds.

It is a model of the queue, so it is checked against the queue: `tests/load/test_replay.py` runs the
same arrivals through a `RequestQueue` on a `SimulatedModel` with the same costs and compares every
request's timestamps. What it leaves out is everything the real clock adds: thread hops, the event
loop, and a real model's step-to-step jitter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from queuelab.checks import positive_int
from queuelab.engine.scheduling import Scheduler, Step, WaitingLine
from queuelab.generation import GenerationParams
from queuelab.load import arrivals
from queuelab.load.stress_run import peak_waiting
from queuelab.metrics import percentiles
from queuelab.models.simulated import SimulatedModel, StepCosts
from queuelab.prompts import choose, choose_caps, load_prompts
from queuelab.request import Request

COLUMNS = ("id", "arrived", "prompt_tokens", "tokens", "started", "first_token", "finished", "wait", "ttft", "e2e")


@dataclass(frozen=True)
class Job:
    """One request of a replay: when it arrives, its prompt length, and how many tokens its answer has."""

    arrival: float
    prompt_tokens: int
    tokens: int  # the answer's length: its natural length, capped at max_new_tokens
    max_new_tokens: int


@dataclass(eq=False)
class _Ticket:
    """What a scheduler reads of a request (a `Request` needs an event loop for its future; this does not)."""

    id: int
    params: GenerationParams
    arrived: float
    prompt_tokens: int


@dataclass
class _Run:
    job: Job
    req: Request
    started: float = 0.0
    first_token: float = 0.0
    done: int = 0  # tokens produced so far


class _Replay:
    def __init__(self, scheduler: Scheduler, jobs: Sequence[Job], costs: StepCosts) -> None:
        self.scheduler, self.costs = scheduler, costs
        self.jobs = sorted(jobs, key=lambda j: j.arrival)
        self.clock, self.next = 0.0, 0
        self.waiting: WaitingLine = OrderedDict()
        self.running: list[_Run] = []
        self.by_req: dict[int, _Run] = {}
        self.rows: list[tuple[float, ...]] = []
        self.steps: list[tuple[float, int, int, float]] = []  # t, batch size, prefill tokens, duration

    def arrive(self) -> None:
        while self.next < len(self.jobs) and self.jobs[self.next].arrival <= self.clock:
            j = self.jobs[self.next]
            req = cast(Request, _Ticket(self.next, GenerationParams(max_new_tokens=j.max_new_tokens), j.arrival,
                                        j.prompt_tokens))
            self.by_req[id(req)] = _Run(j, req)
            self.waiting[req.id] = req
            self.next += 1

    def pending_arrival(self) -> bool:
        return self.next < len(self.jobs) and self.jobs[self.next].arrival <= self.clock

    def run(self) -> pd.DataFrame:
        while True:
            self.arrive()
            decision = self.scheduler.schedule(self.waiting, [r.req for r in self.running], self.clock)
            if isinstance(decision, Step) and decision:
                self.step(decision)
                continue
            if self.next >= len(self.jobs) and not self.waiting and not self.running:
                break
            until = getattr(decision, "until", None)
            later = [t for t in (until, self.jobs[self.next].arrival if self.next < len(self.jobs) else None)
                     if t is not None]
            if not later:
                raise RuntimeError(f"{self.scheduler!r} waits forever with {len(self.waiting)} requests waiting")
            self.clock = max(self.clock, min(later))
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def step(self, step: Step) -> None:
        """One scheduling decision: the step, then decode until a request finishes (or one arrives)."""
        if step.prefill:
            start = self.clock
            prefilled = [self.by_req[id(r)] for r in step.prefill]
            cost = sum(self.costs.prefill(r.job.prompt_tokens) for r in prefilled)
            self.advance(cost, len(prefilled), sum(r.job.prompt_tokens for r in prefilled))
            for r in prefilled:
                r.started, r.first_token, r.done = start, self.clock, 1
            self.running.extend(prefilled)
        if step.decode:
            self.decode([self.by_req[id(r)] for r in step.decode])
        interruptible = self.scheduler.admits_while_running
        while self.running and not self.any_finished() and not (interruptible and self.pending_arrival()):
            self.decode(self.running)
        self.collect()

    def decode(self, runs: list[_Run]) -> None:
        self.advance(self.costs.decode(len(runs)), len(runs), 0)
        for r in runs:
            r.done += 1

    def advance(self, seconds: float, batch: int, prefill_tokens: int) -> None:
        self.steps.append((self.clock, batch, prefill_tokens, seconds))
        self.clock += seconds

    def any_finished(self) -> bool:
        return any(r.done >= r.job.tokens for r in self.running)

    def collect(self) -> None:
        for r in [r for r in self.running if r.done >= r.job.tokens]:
            a = r.job.arrival
            self.rows.append((r.req.id, a, r.job.prompt_tokens, r.job.tokens, r.started, r.first_token,
                              self.clock, r.started - a, r.first_token - a, self.clock - a))
        self.running = [r for r in self.running if r.done < r.job.tokens]


def replay(scheduler: Scheduler, jobs: Sequence[Job], costs: StepCosts) -> pd.DataFrame:
    """Serve `jobs` with `scheduler` in virtual time; one row per request (times in seconds from 0).

    Columns: id, arrived, prompt_tokens, tokens, started, first_token, finished, wait, ttft, e2e.
    Give the scheduler fresh (schedulers such as the adaptive one keep state).
    """
    if not jobs:
        raise ValueError("replay needs at least one job")
    for j in jobs:
        if j.tokens < 1 or j.tokens > j.max_new_tokens or j.prompt_tokens < 0 or j.arrival < 0:
            raise ValueError(f"invalid job {j!r}: need 1 <= tokens <= max_new_tokens, prompt_tokens >= 0, arrival >= 0")
    out = _Replay(scheduler, jobs, costs)
    df = out.run()
    df.attrs["steps"] = pd.DataFrame(out.steps, columns=["t", "batch_size", "prefill_tokens", "duration_s"])
    return df.sort_values("id").reset_index(drop=True)


def jobs(twin: SimulatedModel, rate: float, n: int, *, seed: int = 0, max_new_tokens: int | Sequence[int] = 32,
         prompts: Sequence[str] | None = None, kind: str = "poisson") -> list[Job]:
    """The jobs that `stress.poisson(queue, rate, n=n, seed=seed, ...)` would send to `twin`: the same
    arrival offsets and prompts, with the twin's prompt lengths and answer lengths."""
    positive_int("n", n)
    offsets = arrivals.schedule(kind, rate, n=n, seed=seed)
    chosen = choose(n, prompts, np.random.default_rng([seed, 1]))
    caps = choose_caps(max_new_tokens, n, seed)
    return [Job(float(t), twin.count_tokens(p), twin.answer_length(p, cap), cap)
            for t, p, cap in zip(offsets, chosen, caps)]


def jobs_from(run: Any) -> list[Job]:
    """The jobs a real run (`StressRun`) served: its actual arrival times, prompt lengths and answer
    lengths, so a replay of it differs from the run only in how steps are timed."""
    ok = run.requests[run.requests.status == "completed"]
    if ok.empty:
        raise ValueError(f"run {run.name!r} has no completed requests to replay")
    cap = int(max(run.config.get("max_new_tokens") or 1, ok.completion_tokens.max()))
    t0 = float(ok.arrived.min())
    return [Job(float(a) - t0, int(p), int(c), cap) for a, p, c in zip(ok.arrived, ok.prompt_tokens, ok.completion_tokens)]


def versus(runs: dict[str, Any], schedulers: dict[str, Callable[[], Scheduler]], costs: StepCosts) -> pd.DataFrame:
    """Each real run beside its replay (same arrivals and answers, step costs from `costs`): req/s,
    p50/p99 end-to-end latency and p99 time to first token, real and replayed."""
    rows = []
    for name, run in runs.items():
        twin = summary(replay(schedulers[name](), jobs_from(run), costs))
        real = run.summary
        rows.append({"scheduler": name, "req/s real": real["req_per_s"], "req/s twin": twin["req_per_s"],
                     "e2e p50 real": real["e2e_p50"], "e2e p50 twin": twin["e2e_p50"],
                     "e2e p99 real": real["e2e_p99"], "e2e p99 twin": twin["e2e_p99"],
                     "TTFT p99 real": real["ttft_p99"], "TTFT p99 twin": twin["ttft_p99"]})
    return pd.DataFrame(rows).set_index("scheduler")


def summary(df: pd.DataFrame) -> dict[str, float]:
    """req/s and tokens/s over the run's span, and p50/p99 of e2e, TTFT and wait (seconds)."""
    span = float(df.finished.max() - df.arrived.min())
    out = {"requests": float(len(df)), "req_per_s": len(df) / span, "tokens_per_s": float(df.tokens.sum()) / span,
           # Time-average number waiting (total time queued / span) and the most waiting at once.
           "depth_mean": float(df.wait.sum()) / span, "depth_peak": float(peak_waiting(df.arrived, df.started))}
    for col in ("e2e", "ttft", "wait"):
        p = percentiles(df[col])
        out[f"{col}_p50"], out[f"{col}_p99"] = p.p50, p.p99
    return out


def sweep(twin: SimulatedModel, schedulers: dict[str, Callable[[], Scheduler]], rates: Iterable[float], *,
          seeds: Iterable[int] = (0, 1, 2), n: int | Callable[[float], int] = 400,
          max_new_tokens: int | Sequence[int] = 32, prompts: Sequence[str] | None = None,
          capacity: float | None = None) -> pd.DataFrame:
    """Every scheduler at every arrival rate with every seed, in virtual time: one row per run.

    `n` may depend on the rate (a run near saturation needs more requests to reach steady state).
    Each (rate, seed) pair sends the same arrivals and prompts to every scheduler. With `capacity`
    (req/s), a `load` column gives each rate as a multiple of it.
    """
    if twin.step_costs is None:
        raise ValueError("sweep needs a twin with step_costs (SimulatedModel.calibrated_from / fitted_to)")
    rows: list[dict[str, Any]] = []
    for rate in rates:
        count = n(rate) if callable(n) else n
        for seed in seeds:
            js = jobs(twin, rate, count, seed=seed, max_new_tokens=max_new_tokens, prompts=prompts)
            for name, make in schedulers.items():
                rows.append({"scheduler": name, "rate": rate, "seed": seed,
                             **summary(replay(make(), js, twin.step_costs))})
    out = pd.DataFrame(rows)
    if capacity is not None:
        out.insert(2, "load", out.rate / capacity)
    return out


def sequential_capacity(twin: SimulatedModel, *, max_new_tokens: int | Sequence[int] = 32,
                        prompts: Sequence[str] | None = None) -> float:
    """Requests per second that one-at-a-time service sustains on `twin`, for this workload: 1 / the mean
    service time (prefill + one batch-1 decode step per further token) over every prompt and cap."""
    if twin.step_costs is None:
        raise ValueError("sequential_capacity needs a twin with step_costs")
    costs = twin.step_costs
    pool = list(prompts) if prompts is not None else [p["prompt"] for p in load_prompts()]
    caps = [max_new_tokens] if isinstance(max_new_tokens, int) else list(max_new_tokens)
    service = [costs.prefill(twin.count_tokens(p)) + (twin.answer_length(p, c) - 1) * costs.decode(1)
               for p in pool for c in caps]
    return 1.0 / float(np.mean(service))


def goodput(runs: pd.DataFrame, *, target_s: float, column: str = "e2e_p99") -> pd.DataFrame:
    """Per scheduler: the highest arrival rate up to which `column` (mean over seeds) meets `target_s`
    at every rate tried — the load a server can take while keeping its promise — with the mean and the
    worst seed's value there. NaN if even the lowest rate misses the target."""
    stats = runs.groupby(["scheduler", "rate"], sort=False)[column].agg(["mean", "max"]).reset_index()
    rows = []
    for name, g in stats.groupby("scheduler", sort=False):
        g = g.sort_values("rate")
        ok = g[(g["mean"] <= target_s).cummin()]  # stop at the first miss: beyond it the promise is broken
        last = ok.iloc[-1] if len(ok) else None
        rows.append({"scheduler": name,
                     "max_rate": float(last.rate) if last is not None else float("nan"),
                     f"{column}_mean_s": float(last["mean"]) if last is not None else float("nan"),
                     f"{column}_worst_seed_s": float(last["max"]) if last is not None else float("nan")})
    return pd.DataFrame(rows)
