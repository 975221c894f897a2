"""Argument checks shared by every module: one wording for one mistake, raised as ValueError.

bool is refused wherever a number is expected (it is an int subclass, and `True` seconds or
requests is never what someone meant); NaN and infinity are refused where a finite value is needed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """An int >= 1 (numpy ints too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    if not _finite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative(name: str, value: Any, *, unit: str = "") -> float:
    """A finite number >= 0; `unit` (e.g. "seconds") only words the error."""
    if not _finite(value) or value < 0:
        of = f" of {unit}" if unit else ""
        raise ValueError(f"{name} must be a finite number{of} >= 0, got {value!r}")
    return float(value)


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
