"""queuelab: a workbench for learning how an LLM serving queue behaves under load."""

from .generation import MAX_NEW_TOKENS_LIMIT, Completion, GenerationParams
from .model import EMBEDDED, TINY, LanguageModel, load_model, pick_device
from .simulated import Exponential, Fixed, PerToken, ServiceTime, SimulatedFailure, SimulatedModel

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED", "MAX_NEW_TOKENS_LIMIT", "TINY", "Completion", "Exponential", "Fixed", "GenerationParams",
    "LanguageModel", "PerToken", "ServiceTime", "SimulatedFailure", "SimulatedModel", "load_model", "pick_device",
]
