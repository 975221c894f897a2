"""`Sequence`: one request's generation inside a model — its prompt ids, its own parameters, the
tokens it has produced, its text stream, and when each happened (model-thread clock readings).

A `RunningBatch` (see `model.py`) advances sequences one token at a time; `Sequence` holds
everything that belongs to one of them, so requests in the same batch never share parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from queuelab.generation import Completion, FinishReason, GenerationParams

TokenCallback = Callable[[str], None]


class Sequence:
    """The state of one generation. Models append tokens through `append`; nobody else mutates it."""

    __slots__ = ("prompt", "prompt_ids", "prompt_tokens", "params", "on_token", "output_ids", "finish_reason",
                 "started", "first_token_at", "finished_at", "rng", "_text", "_full", "_sent", "_decoder")

    def __init__(self, prompt: str, params: GenerationParams, *, prompt_ids: list[int] | None = None,
                 prompt_tokens: int | None = None, decoder: Callable[[list[int]], str] | None = None,
                 on_token: TokenCallback | None = None) -> None:
        self.prompt = prompt
        self.params = params
        self.prompt_ids = prompt_ids
        self.prompt_tokens = prompt_tokens if prompt_tokens is not None else len(prompt_ids or ())
        self.on_token = on_token
        self.output_ids: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.started: float | None = None  # the model began its prefill
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.rng: Any = None  # the model's per-sequence random generator (sampling), created at prefill
        self._decoder = decoder
        self._text: list[str] = []  # pieces handed out so far; their join is the text
        self._full = ""  # the decoded text so far, some of it perhaps held back
        self._sent = 0  # characters of it already handed out

    # -- what models call -----------------------------------------------------------------------
    def append(self, token: int, now: float, *, eos: bool = False, piece: str | None = None) -> bool:
        """Add one generated token (produced at `now`); return True if the sequence just finished.

        `eos`: the token is the model's end-of-sequence token. It ends the answer unless the
        parameters say to go on (`ignore_eos`, `min_tokens`); either way it counts, since producing
        it cost a forward pass. `piece`: the token's text, for models that know it directly;
        otherwise the decoder is used. A stop string in the text also ends the answer.
        """
        if self.finish_reason is not None:
            raise RuntimeError("append() on a finished sequence")
        self.output_ids.append(token)
        if self.first_token_at is None:
            self.first_token_at = now
        ends = eos and self.params.ends_at_eos(len(self.output_ids))
        if ends:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        self._stream(piece, drop_last=ends)
        if self.finish_reason is not None:
            self.finished_at = time.perf_counter()
            return True
        return False

    def _stream(self, piece: str | None, *, drop_last: bool) -> None:
        """Hand out the new text: what is safe to show now, holding back a possible stop string's start."""
        final = self.finish_reason is not None
        if piece is None:
            if self._decoder is None:
                return
            text = self._decoder(self.output_ids[:-1] if drop_last else self.output_ids)
            # A multi-byte character split across tokens decodes to U+FFFD until its last byte arrives.
            if not final and text.endswith("\ufffd"):
                return
            self._full = text
        else:
            self._full += piece
        end = len(self._full)
        if self.params.stop:
            cut = self._stop_at()
            if cut is not None:  # the stop string and what follows are not part of the answer
                end, self.finish_reason = cut, "stop"
            elif not final:
                end -= _held_back(self._full, self._sent, self.params.stop)
        if end > self._sent:
            new, self._sent = self._full[self._sent:end], end
            self._text.append(new)
            if self.on_token is not None:
                self.on_token(new)

    def _stop_at(self) -> int | None:
        """Where the first stop string begins in the text not yet handed out, or None.

        Searching from the handed-out mark is enough: a stop string's beginning is always held back.
        """
        hits = [i for i in (self._full.find(s, self._sent) for s in self.params.stop) if i >= 0]
        return min(hits) if hits else None

    # -- what callers read ----------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def text(self) -> str:
        """The text handed out so far (all of it once finished)."""
        return "".join(self._text)

    def completion(self) -> Completion:
        """The finished answer, timed from the start of this sequence's prefill."""
        if self.finish_reason is None or self.started is None or self.finished_at is None:
            raise RuntimeError("completion() before the sequence finished")
        first = self.first_token_at if self.first_token_at is not None else self.finished_at
        return Completion(self.text, self.prompt_tokens, len(self.output_ids), first - self.started,
                          self.finished_at - self.started, self.finish_reason)

    def __repr__(self) -> str:
        state = self.finish_reason or ("running" if self.started is not None else "new")
        return f"<Sequence {self.prompt_tokens}+{len(self.output_ids)} tokens {state}>"


def _held_back(text: str, sent: int, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` (after `sent`) that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text) - sent), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
