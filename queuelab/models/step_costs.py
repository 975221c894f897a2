"""`StepCosts`: what an engine's prefill and decode steps cost, the numbers a simulated model sleeps."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from queuelab.checks import non_negative, positive_int


@dataclass(frozen=True, kw_only=True)
class StepCosts:
    """What an engine's steps cost, in seconds.

    Prefilling a sequence of n prompt tokens costs `prefill_base_s + prefill_per_token_s × n`; one
    decode step over a batch of b sequences costs `decode_base_s + decode_per_seq_s × b` — or, when
    `decode_table` holds measured (batch size, seconds) points, their linear interpolation (and
    extrapolation from the last two points), which is what a twin calibrated from a real model uses.
    """

    decode_base_s: float
    decode_per_seq_s: float = 0.0
    prefill_base_s: float = 0.0
    prefill_per_token_s: float = 0.0
    decode_table: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("decode_base_s", "decode_per_seq_s", "prefill_base_s", "prefill_per_token_s"):
            non_negative(name, getattr(self, name), unit="seconds")
        for b, secs in self.decode_table:
            positive_int("decode_table batch size", b)
            non_negative("decode_table seconds", secs, unit="seconds")
        if list(self.decode_table) != sorted(self.decode_table) or len({b for b, _ in self.decode_table}) != len(
                self.decode_table):
            raise ValueError("decode_table must be sorted by batch size, one entry per size")

    def prefill(self, prompt_tokens: int) -> float:
        return self.prefill_base_s + self.prefill_per_token_s * prompt_tokens

    def decode(self, batch_size: int) -> float:
        t = self.decode_table
        if not t:
            return self.decode_base_s + self.decode_per_seq_s * batch_size
        if len(t) == 1:
            return t[0][1]
        sizes = [b for b, _ in t]
        i = min(max(bisect.bisect_left(sizes, batch_size), 1), len(t) - 1)
        (b0, s0), (b1, s1) = t[i - 1], t[i]
        return max(0.0, s0 + (s1 - s0) * (batch_size - b0) / (b1 - b0))
