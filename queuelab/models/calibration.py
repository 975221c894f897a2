"""Calibration: measure a real model's step costs — from isolated steps (`measure`, behind
`SimulatedModel.calibrated_from`) or from the step log of a real run (`fit`, behind
`SimulatedModel.fitted_to`) — for a simulated twin to sleep.

Prefill time is fitted as base + per-token × prompt tokens over prompts of several lengths; decode
step time is measured at each batch size (median of several steps) and kept as a table, since on a
CPU it is not quite linear in the batch size.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from queuelab.checks import positive_int
from queuelab.generation import GenerationParams
from queuelab.models.base import LanguageModel
from queuelab.models.step_costs import StepCosts
from queuelab.prompts import choose


def _default_prompts() -> list[str]:
    """Eight prompts of the load-test set (seeded), so contexts are as long as in the experiments."""
    return choose(8, None, np.random.default_rng(0))


@dataclass(frozen=True)
class Calibration:
    """The fitted `costs`, and what they were fitted to: (prompt tokens, prefill seconds) points and
    (batch size, median decode seconds)."""

    costs: StepCosts
    prefill_points: tuple[tuple[int, float], ...]
    decode_table: tuple[tuple[int, float], ...]


def measure(model: LanguageModel, *, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16), steps: int = 16,
            prompts: Sequence[str] | None = None, repeats: int = 2) -> Calibration:
    """Step costs measured on `model` in isolated steps (takes seconds on a CPU)."""
    if not batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    for b in batch_sizes:
        positive_int("batch_sizes entry", b)
    positive_int("steps", steps)
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
    return Calibration(costs, points, table)


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


def fit(steps: Any, *, min_samples: int = 3, decode: str = "table", monotone: bool = False) -> Calibration:
    """Step costs fitted to the steps a real run recorded (`queue.steps()`), rather than to isolated steps.

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
    prefill = steps[steps.prefill_tokens > 0]
    return Calibration(costs, tuple(zip(prefill.prefill_tokens.astype(int), prefill.duration_s)), table)


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
