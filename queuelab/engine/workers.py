"""The models a queue's workers serve (one model shared by N worker threads, or one copy each), and
which queue owns a model now."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from queuelab.checks import positive_int
from queuelab.models.base import LanguageModel


def models_for_workers(model: LanguageModel | Sequence[LanguageModel], workers: int) -> list[LanguageModel]:
    """The model each worker serves: `model` `workers` times, or one copy each from a list."""
    positive_int("workers", workers)
    if isinstance(model, Sequence) and not isinstance(model, str):
        copies = list(model)
        if not copies:
            raise ValueError("an empty list of models: give one model, or a list of copies (one worker each)")
        if workers != 1:
            raise ValueError(f"give either workers={workers} (threads sharing one model) or a list of model copies "
                             "(one worker each), not both")
        for m in copies:
            _check_model(m)
        if len(set(map(id, copies))) != len(copies):
            raise ValueError("the same model appears twice in the list: for workers that share one model, "
                             "use RequestQueue(model, workers=N)")
        if len({(type(m), m.name) for m in copies}) != 1:
            raise ValueError("a list of models must be copies of one model (same kind and name), got "
                             + ", ".join(repr(m) for m in copies))
        return copies
    _check_model(model)
    return [model] * workers


def describe(models: list[LanguageModel]) -> dict[str, Any]:
    """The first model's info; with copies, the memory of all of them (what the queue holds)."""
    info = dict(models[0].info())
    if len(set(map(id, models))) > 1:
        info["memory_bytes"] = sum(m.info().get("memory_bytes") or 0 for m in models)
        info["copies"] = len(models)
    elif len(models) > 1:
        info["workers"] = len(models)
    return info


def allow_overlap(models: list[LanguageModel]) -> int | None:
    """Workers sharing one model run their steps at the same time: let the model take that many
    steps at once, or its lock would silently serialize them. Returns the setting to restore."""
    model = models[0]
    if len(models) > 1 and models[1] is model and model.concurrent_steps < len(models):
        previous = model.concurrent_steps
        model.concurrent_steps = len(models)
        return previous
    return None


def _check_model(model: Any) -> None:
    if not hasattr(model, "generate") or not hasattr(model, "new_sequence"):
        raise ValueError(f"model must be a queuelab LanguageModel (ql.load_model / ql.SimulatedModel), got {model!r}")


# One model serves one running queue: a queue started on a model stops the one before it, so
# re-running a cell that makes and starts a queue never leaves an orphan worker on the model.
_OWNER: weakref.WeakKeyDictionary[LanguageModel, Any] = weakref.WeakKeyDictionary()


def owners(models: list[LanguageModel], new: object) -> list[Any]:
    """The queues other than `new` that own any of `models` (each once, in order)."""
    found = [_OWNER.get(m) for m in dict.fromkeys(models)]
    return list(dict.fromkeys(q for q in found if q is not None and q is not new))


def claim(models: list[LanguageModel], owner: object) -> None:
    for m in models:
        _OWNER[m] = owner


def release(models: list[LanguageModel], owner: object) -> None:
    for m in models:
        if _OWNER.get(m) is owner:
            del _OWNER[m]
