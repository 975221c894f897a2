"""Calibration: measure a real model's step costs and build a `SimulatedModel` twin that has them —
from isolated steps (`calibrate`, behind `SimulatedModel.calibrated_from`) or from the step log of a
real run (`fit_steps`, behind `SimulatedModel.fitted_to`).

Prefill time is fitted as base + per-token × prompt tokens over prompts of several lengths; decode
step time is measured at each batch size (median of several steps) and kept as a table, since on a
CPU it is not quite linear in the batch size.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .generation import GenerationParams
from .model import LanguageModel
from .simulated import SimulatedModel, StepCosts


def _default_prompts() -> list[str]:
    """Eight prompts of the load-test set (seeded), so contexts are as long as in the experiments."""
    import numpy as np

    from .prompts import choose

    return choose(8, None, np.random.default_rng(0))


@dataclass(frozen=True)
class Calibration:
    """What was measured: (prompt tokens, prefill seconds) points and (batch size, median decode seconds)."""

    prefill_points: tuple[tuple[int, float], ...]
    decode_table: tuple[tuple[int, float], ...]


def calibrate(model: LanguageModel, *, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16), steps: int = 16,
              prompts: Sequence[str] | None = None, repeats: int = 2,
              answer_tokens: Callable[[str], int] | None = None) -> SimulatedModel:
    """A `SimulatedModel` whose step costs are measured on `model` (takes seconds on a CPU).

    `answer_tokens(prompt)`: the natural answer length per prompt (e.g. measured greedy lengths), so
    the twin stops where the real model would; without it the twin always runs to max_new_tokens.
    The measurements are kept on the twin as `twin.calibration`.
    """
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be ints >= 1, got {batch_sizes!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    prompts = list(prompts) if prompts else _default_prompts()
    _prefill_once(model, prompts[0])  # warm-up: first calls pay for allocation and kernel selection
    points = tuple(_prefill_once(model, p) for p in prompts for _ in range(repeats))
    table = _decode_table(model, sorted(set(batch_sizes)), steps, prompts)
    lengths = np.array([n for n, _ in points], dtype=float)
    secs = np.array([s for _, s in points])
    per_token, base = np.polyfit(lengths, secs, 1) if len(set(lengths)) > 1 else (0.0, float(secs.mean()))
    sizes = np.array([b for b, _ in table], dtype=float)
    decode_secs = np.array([s for _, s in table])
    per_seq, decode_base = np.polyfit(sizes, decode_secs, 1) if len(table) > 1 else (0.0, table[0][1])
    costs = StepCosts(decode_base_s=max(0.0, float(decode_base)), decode_per_seq_s=max(0.0, float(per_seq)),
                      prefill_base_s=max(0.0, float(base)), prefill_per_token_s=max(0.0, float(per_token)),
                      decode_table=table)
    twin = SimulatedModel(step_costs=costs, max_context=model.max_context, name=f"twin of {model.name}",
                          count_tokens=model.count_tokens, answer_tokens=answer_tokens)
    twin.calibration = Calibration(points, table)
    return twin


def _prefill_once(model: LanguageModel, prompt: str) -> tuple[int, float]:
    seq = model.new_sequence(prompt, GenerationParams(max_new_tokens=2))
    batch = model.new_batch()
    info = batch.prefill([seq])
    batch.release(batch.running)
    return seq.prompt_tokens, info.duration_s


def _decode_table(model: LanguageModel, sizes: list[int], steps: int,
                  prompts: Sequence[str]) -> tuple[tuple[int, float], ...]:
    seen: dict[int, list[float]] = defaultdict(list)
    for b in sizes:
        # Long answers, so few sequences stop early; a step records the batch size it really had.
        params = GenerationParams(max_new_tokens=steps + 2)
        batch = model.new_batch()
        batch.prefill([model.new_sequence(prompts[i % len(prompts)], params) for i in range(b)])
        for _ in range(steps):
            if not batch.running:
                break
            info = batch.decode()
            seen[info.batch_size].append(info.duration_s)
        batch.release(batch.running)
    return tuple((b, statistics.median(v)) for b, v in sorted(seen.items()))


def fit_steps(steps: Any, like: LanguageModel, *, min_samples: int = 3, decode: str = "table",
              monotone: bool = False, answer_tokens: Callable[[str], int] | None = None) -> SimulatedModel:
    """A twin fitted to the steps a real run recorded (`queue.steps()`), rather than to isolated steps.

    Decode, `decode="table"`: the median duration at each batch size seen at least `min_samples` times.
    `decode="linear"`: a least-squares line, base + per sequence × batch size, through every decode
    step — better when most batch sizes were seen only a few times (a burst that drains).
    `monotone=True` makes the table non-decreasing in the batch size (pooling adjacent sizes that
    disagree, weighted by how many steps each had): a bigger batch does not make a step cheaper, so
    a dip is noise in sizes seen once or twice.
    Prefill: a least-squares fit of duration = base + per_token × prompt tokens over the steps that
    prefilled one sequence (a joining request), or, with fewer than 3 of those, of base × sequences +
    per_token × tokens over all prefill steps. Steps measured inside a loaded run include what isolated
    steps miss (longer contexts, a busier machine), so a twin fitted to one run predicts the next run
    under the same conditions better.
    """
    if decode not in ("table", "linear"):
        raise ValueError(f"decode must be 'table' or 'linear', got {decode!r}")
    steps_d = steps[steps.decode_tokens > 0]
    counts = steps_d.batch_size.value_counts()
    sizes = sorted(int(b) for b in counts.index if counts[b] >= min_samples)
    if not sizes:
        raise ValueError(f"no batch size has {min_samples} decode steps in this step log")
    table = tuple((b, float(steps_d[steps_d.batch_size == b].duration_s.median())) for b in sizes)
    if monotone:
        table = _non_decreasing(table, [int(counts[b]) for b in sizes])
    base, per_token = _fit_prefill(steps[steps.prefill_tokens > 0])
    if decode == "linear" and steps_d.batch_size.nunique() >= 2:
        per_seq, intercept = np.polyfit(steps_d.batch_size.to_numpy(float), steps_d.duration_s.to_numpy(), 1)
        costs = StepCosts(decode_base_s=max(0.0, float(intercept)), decode_per_seq_s=max(0.0, float(per_seq)),
                          prefill_base_s=base, prefill_per_token_s=per_token)
    else:
        costs = StepCosts(decode_base_s=table[0][1], prefill_base_s=base, prefill_per_token_s=per_token,
                          decode_table=table)
    twin = SimulatedModel(step_costs=costs, max_context=like.max_context, name=f"twin of {like.name} (fitted)",
                          count_tokens=like.count_tokens, answer_tokens=answer_tokens)
    prefill = steps[steps.prefill_tokens > 0]
    twin.calibration = Calibration(tuple(zip(prefill.prefill_tokens.astype(int), prefill.duration_s)), table)
    return twin


def _non_decreasing(table: tuple[tuple[int, float], ...], weights: list[int]) -> tuple[tuple[int, float], ...]:
    """Weighted isotonic regression (pool adjacent violators) of the step times over batch size."""
    blocks: list[list[float]] = []  # [weighted sum, weight, how many sizes]
    for (_, secs), w in zip(table, weights):
        blocks.append([secs * w, float(w), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, w2, n = blocks.pop()
            blocks[-1] = [blocks[-1][0] + s, blocks[-1][1] + w2, blocks[-1][2] + n]
    values = [b[0] / b[1] for b in blocks for _ in range(int(b[2]))]
    return tuple((b, v) for (b, _), v in zip(table, values))


def _fit_prefill(prefill: Any) -> tuple[float, float]:
    """(base seconds per sequence, seconds per prompt token), clipped at 0."""
    if prefill.empty:
        return 0.0, 0.0
    n_all, d_all = prefill.prefill_tokens.to_numpy(float), prefill.duration_s.to_numpy()
    proportional = (0.0, float(d_all.sum() / max(n_all.sum(), 1.0)))  # the fallback: a cost per prompt token
    single = prefill[prefill.batch_size == 1]
    if len(single) >= 3 and single.prefill_tokens.nunique() >= 2:
        n, d = single.prefill_tokens.to_numpy(float), single.duration_s.to_numpy()
        per_token, base = np.polyfit(n, d, 1)
        # Prompts of similar length leave the slope to noise (a busy machine can make it wild): if the
        # line is implausible, or misses the typical prefill by over a quarter, charge per token alone.
        typical = float(np.median(d))
        if base < 0 or per_token < 0 or abs(base + per_token * float(np.median(n)) - typical) > 0.25 * typical:
            return 0.0, float(np.median(d / n))
        return float(base), float(per_token)
    a = np.column_stack([prefill.batch_size.to_numpy(float), n_all])
    if len(prefill) < 2 or np.linalg.matrix_rank(a) < 2:
        return proportional  # e.g. every prefill step had the same batch and length: no line to fit
    (base, per_token), *_ = np.linalg.lstsq(a, d_all, rcond=None)
    return (float(base), float(per_token)) if base >= 0 and per_token >= 0 else proportional



async def twin_from_burst(model: LanguageModel, *, max_new_tokens: int = 64, max_batch: int = 32,
                          prompts: Sequence[str] | None = None, progress: Any = False) -> tuple[SimulatedModel, Any]:
    """Send every prompt once, all at once, through continuous batching on the real `model`; return a
    twin fitted to that run's steps and the run (a `StressRun`).

    The twin answers each prompt with as many tokens as the real model did (greedy, capped at
    `max_new_tokens`), so a replay with caps up to `max_new_tokens` has the real answer lengths; a prompt
    the burst did not see answers up to its cap. One real run gives both the answer lengths and step
    costs measured under load (batch sizes from `max_batch` down to 1, as the burst drains): the median
    step at every batch size seen, made non-decreasing (sizes a draining burst saw once are noisy) and
    interpolated between them. (Not a line: on a CPU a step at batch 2 can cost nearly twice one at
    batch 1, and batch 32 little more than batch 2.)
    """
    from . import stress
    from .prompts import load_prompts
    from .request_queue import RequestQueue
    from .scheduling import ContinuousBatchScheduler

    pool = list(prompts) if prompts is not None else [p["prompt"] for p in load_prompts()]
    async with RequestQueue(model, scheduler=ContinuousBatchScheduler(max_batch=max_batch),
                            max_queue_size=len(pool)) as q:
        run = await stress.rapid_fire(q, n=len(pool), prompts=pool, max_new_tokens=max_new_tokens,
                                      progress=progress, name=f"burst of {len(pool)} prompts")
    ok = run.requests[run.requests.status == "completed"]
    lengths = dict(zip(ok.prompt, ok.completion_tokens.astype(int)))
    twin = fit_steps(run.steps, model, min_samples=1, monotone=True,
                     answer_tokens=lambda p: lengths.get(p, max_new_tokens))
    return twin, run
