"""`StepRunner`: executes the scheduler's steps on the model, in the model's thread.

It owns the model's `RunningBatch` (sequences and KV state) and the requests running in it, runs
one step — and then further "decode everything running" steps for as long as no scheduling
decision is due, so a long answer costs one thread hop, not one per token — and reports which
requests finished or failed. It never changes a status: the queue does that on the event loop.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import pandas as pd

from queuelab.engine.scheduling import Step
from queuelab.metrics import KVUsage
from queuelab.models.base import LanguageModel, StepInfo
from queuelab.request import Request
from queuelab.sequence import Sequence

STEP_COLUMNS = ("t", "batch_size", "prefill_tokens", "decode_tokens", "duration_s", "kv_tokens", "pad_tokens",
                "kv_blocks")


@dataclass
class StepOutcome:
    """What a `run` call ended with: requests that finished, and requests that failed (with the error)."""

    finished: list[Request] = field(default_factory=list)
    failed: list[Request] = field(default_factory=list)
    error: str | None = None


class StepRunner:
    """The running batch of one queue. `run` is called from one worker thread at a time."""

    def __init__(self, model: LanguageModel, max_steps: int = 100_000) -> None:
        self.model = model
        self.batch = model.new_batch()
        self.running: list[Request] = []  # in the order they joined
        #: Set (from the event loop) when something arrived that the scheduler may want to admit.
        self.interrupt = threading.Event()
        self._log: deque[StepInfo] = deque(maxlen=max_steps)
        self._log_lock = threading.Lock()  # the loop copies the log while this thread appends
        self._count = 0

    def run(self, step: Step, *, interruptible: bool) -> StepOutcome:
        """Run `step`, then keep decoding every running request until one finishes (or, if
        `interruptible`, until `interrupt` is set). Runs in a worker thread."""
        prefill, decode = [_seq(r) for r in step.prefill], [_seq(r) for r in step.decode]
        mixed = bool(prefill and decode and self.batch.mixes_steps)
        # Who a failure takes down: a prefill alone touches only the joining requests' cache; a
        # step that decodes touches every running row.
        victims = [*step.prefill, *self.running] if mixed else step.prefill
        try:
            if mixed:
                self._record(self.batch.mixed(prefill, decode))
            elif prefill:
                self._record(self.batch.prefill(prefill))
            self.running.extend(step.prefill)
            victims = list(self.running)
            if decode and not mixed:
                self._record(self.batch.decode(decode))
            while self.batch.running and not self._any_finished() and not (interruptible and self.interrupt.is_set()):
                self._record(self.batch.decode())
        except Exception as e:  # the model failed: fail the step's requests, keep serving the rest
            return self._fail(victims, f"{type(e).__name__}: {e}")
        return StepOutcome(finished=self._collect_finished())

    def _any_finished(self) -> bool:
        return any(_seq(r).is_finished for r in self.running)

    def _collect_finished(self) -> list[Request]:
        done = [r for r in self.running if _seq(r).is_finished]
        if done:
            self.running = [r for r in self.running if not _seq(r).is_finished]
        return done

    def _fail(self, victims: list[Request], error: str) -> StepOutcome:
        """A prefill failure fails the requests being prefilled (the running rows were not touched);
        a decode failure fails every running request, since the step touched every row of the KV cache."""
        finished = self._collect_finished()  # finished before the failure: they keep their answer
        victims = [r for r in victims if not _seq(r).is_finished]
        gone = set(map(id, victims))
        self.batch.release([_seq(r) for r in victims])
        self.running = [r for r in self.running if id(r) not in gone]
        return StepOutcome(finished=finished, failed=victims, error=error)

    def _record(self, info: StepInfo) -> None:
        with self._log_lock:
            self._log.append(info)
            self._count += 1

    def steps(self, since: float) -> pd.DataFrame:
        """One row per model step: its start (`t`, and `elapsed` since `since`), batch size, tokens, duration."""
        with self._log_lock:
            rows = [(s.t, s.batch_size, s.prefill_tokens, s.decode_tokens, s.duration_s, s.kv_tokens, s.pad_tokens,
                     s.kv_blocks) for s in self._log]
        df = pd.DataFrame(rows, columns=list(STEP_COLUMNS))
        df.insert(1, "elapsed", df["t"] - since)
        return df

    @property
    def step_count(self) -> int:
        return self._count


def _seq(r: Request) -> Sequence:
    assert r.sequence is not None, f"request {r.id} has no sequence"
    return r.sequence


def step_log(runners: list[StepRunner], since: float) -> pd.DataFrame:
    """Every runner's steps in time order; with several, a `worker` column (0, 1, …) says whose."""
    if len(runners) == 1:
        return runners[0].steps(since)
    frames = [r.steps(since).assign(worker=i) for i, r in enumerate(runners)]
    return pd.concat(frames, ignore_index=True).sort_values("t", kind="stable").reset_index(drop=True)


def kv_usage(runners: list[StepRunner]) -> KVUsage | None:
    """KV blocks over every runner's paged cache (each worker's copy has its own budget)."""
    usages = [u for u in (r.batch.kv_usage() for r in runners) if u is not None]
    if len(usages) <= 1:
        return usages[0] if usages else None
    return KVUsage(sum(u.blocks_used for u in usages), sum(u.blocks_total for u in usages),
                   usages[0].block_size, sum(u.last_block_fill for u in usages) / len(usages))
