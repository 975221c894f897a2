"""queuelab: a workbench for learning how an LLM serving queue behaves under load."""

from typing import TYPE_CHECKING

from . import stress
from .errors import QueuelabError, QueueStateError, SchedulerError
from .generation import MAX_NEW_TOKENS_LIMIT, Completion, GenerationParams
from .lesson_profile import by_profile, profile
from .metrics import Percentiles, QueueStats
from .model import EMBEDDED, TINY, LanguageModel, RunningBatch, StepInfo, load_model, pick_device
from .request import Request, RequestCancelled, RequestError, RequestFailed, RequestRejected, RequestStatus
from .request_queue import QueueState, RequestQueue
from .scheduling import (
    AdaptiveBatchScheduler,
    ContinuousBatchScheduler,
    LengthGroupedScheduler,
    Scheduler,
    SequentialScheduler,
    StaticBatchScheduler,
    Step,
    Wait,
)
from .sequence import Sequence
from .simulated import Exponential, Fixed, PerToken, ServiceTime, SimulatedFailure, SimulatedModel, StepCosts
from .stress_run import StressRun
from .sync import run

if TYPE_CHECKING:  # visible to type checkers and IDEs; imported lazily at run time (below)
    from . import alternatives, memory, plots, queueing, theory
    from .dashboard import Dashboard, StressView

# The notebook extra (ipywidgets, matplotlib) is optional: these load only when first used.
_LAZY_ATTRS = {"Dashboard": ".dashboard", "StressView": ".dashboard"}
_LAZY_MODULES = ("plots", "dashboard", "theory", "queueing", "memory", "alternatives")


def __getattr__(name: str) -> object:
    import importlib

    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name], __name__), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'queuelab' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    # models and their step interface
    "EMBEDDED", "TINY", "LanguageModel", "load_model", "pick_device", "SimulatedModel", "SimulatedFailure",
    "ServiceTime", "Fixed", "Exponential", "PerToken", "StepCosts", "RunningBatch", "Sequence", "StepInfo",
    "GenerationParams", "Completion", "MAX_NEW_TOKENS_LIMIT",
    # the queue and its schedulers
    "RequestQueue", "QueueState", "Request", "RequestStatus", "QueueStats", "Percentiles",
    "Scheduler", "Step", "Wait", "SequentialScheduler", "StaticBatchScheduler", "LengthGroupedScheduler",
    "ContinuousBatchScheduler", "AdaptiveBatchScheduler",
    # errors
    "QueuelabError", "QueueStateError", "SchedulerError", "RequestError", "RequestFailed", "RequestCancelled",
    "RequestRejected",
    # experiments and views
    "stress", "StressRun", "Dashboard", "StressView", "plots", "theory", "queueing", "memory", "alternatives",
    # helpers
    "run", "profile", "by_profile",
]
