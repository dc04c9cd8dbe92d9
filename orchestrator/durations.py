"""Durations and times as people write them on a command line: ``90s``, ``15m``, ``1h30m``,
``2d``, ``0.5`` (seconds); ``2026-12-05T09:00:00Z``."""

from __future__ import annotations

import math
import re
from datetime import datetime

from orchestrator.errors import InvalidArgument
from orchestrator.kinds import seconds

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds, or parts like ``1h30m`` / ``90s``.
    Raises ``ValueError`` for anything else, a negative or an infinite value."""
    t = text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        pos, value = 0, 0.0
        for m in _PART.finditer(t):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise ValueError(f"{text!r} is not a duration (say 90s, 15m, 1h30m, 2d or a number of seconds)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r}: a duration must be a finite number of seconds >= 0")
    return value


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with its zone (``Z`` or ``+01:00``). Raises ``ValueError``."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (say 2026-12-05T09:00:00Z)") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (end it with Z or an offset like +01:00)")
    return at


def check_age(value: object, what: str = "older_than_s") -> float:
    """``value`` as an age in seconds, or ``InvalidArgument``: NaN compares false with every
    time, so a purge by a NaN age would take every job, however new."""
    if not seconds(value):
        raise InvalidArgument(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
