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
  sets, models) are written as pydantic writes them, and what it writes them as is held to
  the same rule; a value it cannot write (an arbitrary object) is refused.

A breach raises ``Unstorable`` (a ``PermanentError``: retrying cannot help) with where and why.

Text the project writes itself (a failure's reason, an exception's message) is made storable
instead: ``storable_text`` escapes what no store takes and keeps a long text's head and tail.
"""

from __future__ import annotations

import math
from typing import Any

import pydantic_core

from orchestrator.errors import PermanentError

MAX_ID_BYTES = 512
MAX_DEPTH = 32
MAX_INT = 2**64 - 1
#: the longest reason (a failure's, a snooze's, a cancel's) a job's history keeps: a handler's
#: exception may carry megabytes, and every write of the job rewrites its history
MAX_REASON_CHARS = 2000


class Unstorable(PermanentError, ValueError):
    """A value no backend can store and read back as it is."""


def storable_text(value: object, limit: int | None = MAX_REASON_CHARS) -> str:
    """``value`` as text every store and queue takes: a lone surrogate or a NUL shown escaped,
    and past ``limit`` characters its head and its tail around " ... " (the tail of a reason
    says the attempt, of a traceback where it was raised)."""
    text = value if isinstance(value, str) else said(value)
    text = text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    if limit is not None and len(text) > limit:
        half = (limit - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text


def said(value: object) -> str:
    """``str(value)``, or a note where it raises: a handler's exception is written into
    reasons, records and logs, and one whose ``__str__`` raises must fail its own job, not
    the batch it came in."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}: str() raised>"


def described(error: BaseException) -> str:
    """``error`` as a reason or a log's error: its type and what it says (``said``)."""
    return f"{type(error).__name__}: {said(error)}"


def shown(value: object) -> str:
    """``repr(value)`` for a message, or its type where that raises, and at most 100 characters."""
    try:
        text = repr(value)
    except Exception:
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= 100 else f"{text[:97]}..."


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
    found = _find(value, 0)
    return None if found is None else f"{where}{found[0]}: {found[1]}"


def _find(v: Any, depth: int) -> tuple[str, str] | None:
    """(the path below ``v``, why) of the first thing no backend stores, or None. It runs on
    every message and result, so the common shapes are checked first and a path is only
    built on the way back from a problem; nesting stops at ``MAX_DEPTH``, so depth is no risk."""
    t = type(v)
    if t is str:
        if v.isascii():
            return None
        try:
            v.encode()
        except UnicodeEncodeError:
            return "", f"text {v[:40]!r} is not valid UTF-8 (a lone surrogate)"
        return None
    if v is None or t is bool:
        return None
    if t is int:
        return None if -MAX_INT <= v <= MAX_INT else ("", f"integer of {v.bit_length()} bits is beyond 64 bits "
                                                         "(store it as text)")
    if t is float:
        return None if math.isfinite(v) else ("", f"{v} is not a finite number (JSON cannot carry it)")
    if isinstance(v, dict):
        if depth >= MAX_DEPTH:
            return "", f"nested more than {MAX_DEPTH} deep"
        for k, item in v.items():
            if type(k) is not str or not k.isascii():  # (the usual key needs no call to tell)
                if not isinstance(k, str):
                    return "", f"key {shown(k)} is not text"
                bad = _find(k, depth)
                if bad is not None:
                    return f".{k}{bad[0]}", bad[1]
            bad = _find(item, depth + 1)
            if bad is not None:
                return f".{k}{bad[0]}", bad[1]
        return None
    if isinstance(v, list | tuple):
        if depth >= MAX_DEPTH:
            return "", f"nested more than {MAX_DEPTH} deep"
        for i, item in enumerate(v):
            bad = _find(item, depth + 1)
            if bad is not None:
                return f"[{i}]{bad[0]}", bad[1]
        return None
    if isinstance(v, str):  # a str subclass (an enum's value, say)
        return _find(str(v), depth)
    if isinstance(v, bool):
        return None
    if isinstance(v, int):  # an int subclass (IntEnum)
        return _find(int(v), depth)
    if isinstance(v, float):
        return _find(float(v), depth)
    return _written_by_pydantic(v, depth)


def _written_by_pydantic(v: Any, depth: int) -> tuple[str, str] | None:
    """Datetimes, decimals, sets, models and the like are written as pydantic writes them:
    what it writes them as is checked as any value is; what it cannot write at all is refused
    here (every backend but memory, which keeps objects as they are, failed at the write)."""
    try:
        plain = pydantic_core.to_jsonable_python(v)
    except Exception as exc:  # PydanticSerializationError, or whatever the object's own code raises
        return "", f"a value of type {type(v).__name__}, which no store can write ({type(exc).__name__})"
    return None if type(plain) is type(v) else _find(plain, depth)


def check_value(value: Any, where: str) -> None:
    problem = value_problem(value, where)
    if problem is not None:
        raise Unstorable(problem)


def fields_problem(fields: object, where: str = "fields") -> str | None:
    """Why ``fields`` cannot be a job's fields (storable values under non-empty names), or None."""
    if not isinstance(fields, dict):
        return f"{where} must be a JSON object (a dict), got {type(fields).__name__}"
    if not fields:  # a result that sets no fields, the commonest
        return None
    for name in fields:
        if not isinstance(name, str) or not name:
            return f"{where}: field name {shown(name)} must be non-empty text"
    return value_problem(fields, where)


def check_fields(fields: dict[str, Any], where: str = "fields") -> None:
    problem = fields_problem(fields, where)
    if problem is not None:
        raise Unstorable(problem)
