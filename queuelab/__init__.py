"""queuelab: a workbench for learning how an LLM serving queue behaves under load."""

from .generation import MAX_NEW_TOKENS_LIMIT, Completion, GenerationParams
from .metrics import Percentiles, QueueStats
from .model import EMBEDDED, TINY, LanguageModel, load_model, pick_device
from .request import (Request, RequestCancelled, RequestError, RequestFailed, RequestRejected, RequestStatus)
from .request_queue import RequestQueue
from .model import RunningBatch, StepInfo
from .scheduling import (AdaptiveBatchScheduler, ContinuousBatchScheduler, LengthGroupedScheduler, Scheduler,
                         SequentialScheduler, StaticBatchScheduler, Step, Wait)
from .sequence import Sequence
from .simulated import Exponential, Fixed, PerToken, ServiceTime, SimulatedFailure, SimulatedModel, StepCosts
from .sync import run
from .profile import by_profile, profile


def __getattr__(name: str) -> object:
    # The notebook extra (ipywidgets, matplotlib) is optional: import those modules only when asked.
    import importlib

    if name in ("Dashboard", "StressView"):
        return getattr(importlib.import_module(".dashboard", __name__), name)
    if name in ("plots", "dashboard", "theory"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'queuelab' has no attribute {name!r}")


from . import stress
from .stress_run import StressRun

__version__ = "0.1.0"

__all__ = [
    "AdaptiveBatchScheduler", "ContinuousBatchScheduler", "LengthGroupedScheduler", "RunningBatch", "Sequence",
    "StaticBatchScheduler", "Step", "StepCosts", "StepInfo", "Wait",
    "EMBEDDED", "MAX_NEW_TOKENS_LIMIT", "TINY", "Completion", "Exponential", "Fixed", "GenerationParams",
    "LanguageModel", "PerToken", "Percentiles", "QueueStats", "Request", "RequestCancelled", "RequestError",
    "RequestFailed", "RequestQueue", "RequestRejected", "RequestStatus", "Scheduler", "SequentialScheduler",
    "ServiceTime", "SimulatedFailure", "SimulatedModel", "StressRun", "by_profile", "load_model", "pick_device",
    "profile", "run", "stress",
]
