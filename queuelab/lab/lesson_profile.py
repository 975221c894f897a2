"""Lesson sizes: the full profile is what a learner runs; the quick one (QUEUELAB_PROFILE=quick) keeps CI short.

Both use the real embedded model; quick shrinks waves, request counts and tokens.
"""

from __future__ import annotations

import os
from typing import TypeVar

PROFILE_ENV = "QUEUELAB_PROFILE"
PROFILES = ("full", "quick")
T = TypeVar("T")


def profile() -> str:
    """The active profile: 'full' (default) or 'quick'."""
    value = os.environ.get(PROFILE_ENV, "full").strip().lower() or "full"
    if value not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={value!r}: use one of {', '.join(PROFILES)}")
    return value


def by_profile(full: T, quick: T) -> T:
    """`full` normally, `quick` when QUEUELAB_PROFILE=quick."""
    return quick if profile() == "quick" else full
