"""Whether a value is of the kind a setting or an argument asks for. ``bool`` is an ``int`` to
Python, and NaN compares false with everything: both would pass a plain range check."""

from __future__ import annotations

import math
from typing import TypeGuard


def whole(value: object, low: int, high: float = math.inf) -> TypeGuard[int]:
    """A whole number (not a bool) in ``low..high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def seconds(value: object) -> TypeGuard[int | float]:
    """A finite number of seconds >= 0 (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf
