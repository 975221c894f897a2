"""A twin from one real burst: run it through continuous batching, then fit a simulated model to
its step log and answer lengths, for sweeps in virtual time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from queuelab.engine.request_queue import RequestQueue
from queuelab.engine.scheduling import ContinuousBatchScheduler
from queuelab.load import stress
from queuelab.load.stress_run import StressRun
from queuelab.models.base import LanguageModel
from queuelab.models.simulated import SimulatedModel
from queuelab.prompts import load_prompts


async def twin_from_burst(model: LanguageModel, *, max_new_tokens: int = 64, max_batch: int = 32,
                          prompts: Sequence[str] | None = None, progress: Any = False) -> tuple[SimulatedModel, StressRun]:
    """Send every prompt once, all at once, through continuous batching on the real `model`; return a
    twin fitted to that run's steps and the run (a `StressRun`).

    The twin answers each prompt with as many tokens as the real model did (greedy, capped at
    `max_new_tokens`), so a replay with caps up to `max_new_tokens` has the real answer lengths; a prompt
    the burst did not see answers up to its cap. One real run gives both the answer lengths and step
    costs measured under load (batch sizes from `max_batch` down to 1, as the burst drains): the median
    step at every batch size seen, made non-decreasing (sizes a draining burst saw once are noisy) and
    interpolated between them. (Not a line: on a CPU the step cost bends with the batch size, and
    how it bends changes with the machine's state.)
    """
    pool = list(prompts) if prompts is not None else [p["prompt"] for p in load_prompts()]
    async with RequestQueue(model, scheduler=ContinuousBatchScheduler(max_batch=max_batch),
                            max_queue_size=len(pool)) as q:
        run = await stress.rapid_fire(q, n=len(pool), prompts=pool, max_new_tokens=max_new_tokens,
                                      progress=progress, name=f"burst of {len(pool)} prompts")
    ok = run.requests[run.requests.status == "completed"]
    lengths = dict(zip(ok.prompt, ok.completion_tokens.astype(int)))
    twin = SimulatedModel.fitted_to(run.steps, model, min_samples=1, monotone=True,
                                    answer_tokens=lambda p: lengths.get(p, max_new_tokens))
    return twin, run
