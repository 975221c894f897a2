"""queuelab: a workbench for learning how an LLM serving queue behaves under load.

The package is in layers, each a folder, imports only going down (tests/test_layers.py checks it):
`serve` and `lab` on top, `observe` (read-only views), `load` (experiments), `engine` (the queue),
`models`, and the shared vocabulary at the root (requests, sequences, generation options, errors).
"""

from typing import TYPE_CHECKING

from queuelab.engine.request_queue import QueueState, RequestQueue
from queuelab.engine.scheduling import (
    AdaptiveBatchScheduler,
    ContinuousBatchScheduler,
    LengthGroupedScheduler,
    Scheduler,
    SequentialScheduler,
    StaticBatchScheduler,
    Step,
    Wait,
)
from queuelab.errors import (
    QueuelabError,
    QueueStateError,
    RequestCancelled,
    RequestError,
    RequestFailed,
    RequestRejected,
    SchedulerError,
    SimulatedFailure,
)
from queuelab.generation import MAX_NEW_TOKENS_LIMIT, Completion, GenerationParams
from queuelab.lab.lesson_profile import by_profile, profile
from queuelab.load import progress, stress
from queuelab.load.stress_run import StressRun
from queuelab.metrics import Percentiles, QueueStats
from queuelab.models.base import EMBEDDED, TINY, LanguageModel, RunningBatch, StepInfo
from queuelab.models.loading import load_model, pick_device
from queuelab.models.simulated import Exponential, Fixed, PerToken, ServiceTime, SimulatedModel
from queuelab.models.step_costs import StepCosts
from queuelab.observe.progress_bar import notebook_bar
from queuelab.request import Request, RequestStatus
from queuelab.sequence import Sequence
from queuelab.sync import run

if TYPE_CHECKING:  # visible to type checkers and IDEs; imported lazily at run time (below)
    from queuelab.lab import alternatives, memory, queueing, theory
    from queuelab.observe import dashboard, plots
    from queuelab.observe.dashboard import Dashboard, StressView

# `progress=True` in an experiment shows a bar. The load layer cannot reach up for the notebook's
# widget bar, so the package plugs it in here (it imports ipywidgets only when a kernel asks).
progress.use_notebook_bar(notebook_bar)

# The notebook extra (ipywidgets, matplotlib) is optional: these load only when first used.
_LAZY_ATTRS = {"Dashboard": "queuelab.observe.dashboard", "StressView": "queuelab.observe.dashboard"}
_LAZY_MODULES = {"plots": "queuelab.observe.plots", "dashboard": "queuelab.observe.dashboard",
                 "theory": "queuelab.lab.theory", "queueing": "queuelab.lab.queueing",
                 "memory": "queuelab.lab.memory", "alternatives": "queuelab.lab.alternatives"}


def __getattr__(name: str) -> object:
    import importlib

    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
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
    "stress", "StressRun", "Dashboard", "StressView", "plots", "dashboard", "theory", "queueing", "memory",
    "alternatives",
    # helpers
    "run", "profile", "by_profile",
]
