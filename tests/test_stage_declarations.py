"""A stage declared with any names and settings either starts, with settings every part of the
controller can honour, or is refused with ``ConfigError`` naming what is wrong: never another
exception at start, never a worker that runs with a NaN lease or a queue no consumer can name."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator import Pipeline, Result, Worker
from orchestrator.backends import memory_backend
from orchestrator.errors import ConfigError

GOOD_NAMES = ["s", "in", "a.b-c_d", "stage two"]
good_names = st.sampled_from(GOOD_NAMES)
bad_names = st.sampled_from(["", " ", "q\ud800", "a\x00", "x" * 600, None, 5])
seconds = (st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 100_000)
           | st.sampled_from(["5", True]))
SECONDS = ["visibility_timeout_s", "time_limit_s", "retry_base_s", "retry_max_s", "wait_s", "delay_s",
           "begin_after_s", "max_snooze_s"]


def _noop(ctx, msg):  # type: ignore[no-untyped-def]
    return Result()


def _declare(name: Any, source: Any, emit_to: Any, handler: Any, settings: dict[str, Any]) -> Pipeline | None:
    """The pipeline of that one stage, set up and a worker made for it; None if refused (ConfigError)."""
    p = Pipeline("declared")
    backend = memory_backend()
    try:
        p.stage(name, source=source, emit_to=emit_to, **settings)(handler)
        p.setup(backend)
        Worker(p, name, backend)
    except ConfigError:
        return None
    return p


@given(name=good_names | bad_names, source=good_names | bad_names, emit_to=st.none() | good_names | bad_names,
       handler=st.sampled_from([_noop, 5, None]))
def test_a_stage_with_names_no_consumer_could_carry_or_no_handler_is_refused(
        name: Any, source: Any, emit_to: Any, handler: Any) -> None:
    p = _declare(name, source, emit_to, handler, {})
    good = [name, source, *([emit_to] if emit_to is not None else [])]
    assert (p is not None) == (all(n in GOOD_NAMES for n in good) and handler is _noop)


@given(settings=st.dictionaries(st.sampled_from(SECONDS), seconds))
def test_a_stage_starts_with_settings_it_can_honour_or_is_refused(settings: dict[str, Any]) -> None:
    p = _declare("s", "in", "out", _noop, settings)
    if p is None:
        return
    st = p.get("s")
    for key in SECONDS:
        value = getattr(st, key)
        if value is None and key in ("time_limit_s", "max_snooze_s"):
            continue
        assert type(value) in (int, float) and math.isfinite(value) and value >= 0, (key, value)
        assert key != "time_limit_s" or value > 0
