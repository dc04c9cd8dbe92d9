"""What every backend can store and read back: one rule, checked before anything is written.

A value that one store takes and another refuses, or that a store takes and then cannot read
back, would fail a whole batch's write (or every later read of the job). So ids, payloads and
result fields are checked against the narrowest backend before they reach any of them:

- **job ids**: non-blank, valid UTF-8 (no lone surrogates), no NUL (PostgreSQL text refuses
  it), at most 512 bytes (a key every store can index);
- **user ids**: the same, but may be absent;
- **values** (payloads, fields, emitted payloads): JSON-shaped; text without lone
  surrogates; integers of at most 64 bits (``-(2**64 - 1)`` to ``2**64 - 1``: larger ones
  are refused, not rounded: DynamoDB keeps 38 digits and JSON readers differ past 64 bits);
  finite floats (JSON has no NaN or infinity); nesting at most 32 deep (DynamoDB's limit);
  object keys that are text. Other values pydantic can write (datetimes, decimals, enums,
  models) are written as pydantic writes them, as before.

A breach raises ``Unstorable`` (a ``PermanentError``: retrying cannot help) with where and why.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.errors import PermanentError

MAX_ID_BYTES = 512
MAX_DEPTH = 32
MAX_INT = 2**64 - 1


class Unstorable(PermanentError, ValueError):
    """A value no backend can store and read back as it is."""


def id_problem(value: object, what: str = "job id", *, optional: bool = False) -> str | None:
    """Why ``value`` cannot be a job (or user) id, or None when it can."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        return f"{what} must be text, got {type(value).__name__}"
    if not value.strip():
        return f"{what} cannot be blank"
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return f"{what} {value!r} is not valid UTF-8 text"
    if "\x00" in value:
        return f"{what} {value!r} contains a NUL character"
    if size > MAX_ID_BYTES:
        return f"{what} is {size} bytes, over the {MAX_ID_BYTES}-byte limit"
    return None


def check_id(value: object, what: str = "job id", *, optional: bool = False) -> None:
    problem = id_problem(value, what, optional=optional)
    if problem is not None:
        raise Unstorable(problem)


def value_problem(value: Any, where: str) -> str | None:
    """Why ``value`` (at ``where``) cannot be stored on every backend, or None."""
    # iterative, so a value nested 100,000 deep is refused without a RecursionError
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        v, at, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode()
            except UnicodeEncodeError:
                return f"{at}: text {v[:40]!r} is not valid UTF-8 (a lone surrogate)"
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not -MAX_INT <= v <= MAX_INT:
                return f"{at}: integer of {v.bit_length()} bits is beyond 64 bits (store it as text)"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{at}: {v} is not a finite number (JSON cannot carry it)"
        elif isinstance(v, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return f"{at}: nested more than {MAX_DEPTH} deep"
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        return f"{at}: key {k!r} is not text"
                    stack.append((k, f"{at} key", depth + 1))
                    stack.append((item, f"{at}.{k}", depth + 1))
            else:
                stack.extend((item, f"{at}[{i}]", depth + 1) for i, item in enumerate(v))
    return None


def check_value(value: Any, where: str) -> None:
    problem = value_problem(value, where)
    if problem is not None:
        raise Unstorable(problem)


def check_fields(fields: dict[str, Any], where: str = "fields") -> None:
    """A job's fields: storable values under non-empty names."""
    for name in fields:
        if not isinstance(name, str) or not name:
            raise Unstorable(f"{where}: field name {name!r} must be non-empty text")
    check_value(fields, where)
