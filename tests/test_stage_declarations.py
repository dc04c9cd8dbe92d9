"""A stage declared with any names and settings either starts, with settings every part of the
controller can honour, or is refused with ``ConfigError`` naming what is wrong: never another
exception at start, never a worker that runs with a NaN lease or a queue no consumer can name."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator import Pipeline, Result, Worker
from orchestrator.backends import Backend, memory_backend, sqlite_backend
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


def _declare(name: Any, source: Any, emit_to: Any, handler: Any, settings: dict[str, Any],
             backend: Backend | None = None) -> Pipeline | None:
    """The pipeline of that one stage, set up and a worker made for it; None if refused (ConfigError)."""
    p = Pipeline("declared")
    backend = backend or memory_backend()
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


WHOLE = {"max_receives": (1, 998), "batch_size": (1, 100), "priority": (0, 9)}  # (SQS's receive count caps the first)
wholes = st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 998, 999, 10**20, 2.5, "5", True, None])


@given(settings=st.dictionaries(st.sampled_from(sorted(WHOLE)), wholes))
@example(settings={"max_receives": 10**20})  # OverflowError where SQLite stored the queue's settings
@example(settings={"batch_size": 2.5})  # a worker took it, and asked its queue for 2.5 messages
def test_a_stage_takes_whole_number_settings_in_their_range_or_is_refused(settings: dict[str, Any]) -> None:
    # (on SQLite: a count beyond 64 bits raised OverflowError where the queue was created)
    with tempfile.TemporaryDirectory() as tmp:
        backend = sqlite_backend(Path(tmp) / "q.db")
        try:
            p = _declare("s", "in", "out", _noop, settings, backend)
        finally:
            backend.close()
    in_range = all((v is None and k != "max_receives" and k != "priority")
                   or (type(v) is int and WHOLE[k][0] <= v <= WHOLE[k][1]) for k, v in settings.items())
    assert (p is not None) == in_range, settings


#: setting -> (values of the right kind, values Python would take and misread)
SHAPES: dict[str, tuple[list[Any], list[Any]]] = {
    "dead_letter": ([None, "elsewhere-dlq"], ["", "a\x00", "in"]),  # ("in": its own source)
    "emit_format": (["envelope", "plain"], ["xml", None]),
    "max_body_bytes": ([1024, 262_144, 10**7], [0, -1, 1023, 2.5, True]),
    "job_id_field": (["job_id", "archives_data.0.job_id|job_id"], ["", " ", 5, None]),
    "required_fields": ([(), ["a"], ("a", "b")], ["abc", [5], [""]]),
    "accepts_tasks": ([(), ["t"]], ["abc", [""], ["a\x00"]]),
    "subscribe": ([(), ["t1", "t2"]], ["topic", [""]]),
    "nothing_to_do": ([None, lambda payload: False], [5]),
    "plain_json": ([True, False], ["yes", None]),
    "takes_submissions": ([None, True, False], ["no", 0]),
    "raw_subscription": ([True, False], [None, 1]),
    "offload_large_bodies": ([True, False], ["true"]),
}
shaped = st.sampled_from(sorted(SHAPES)).flatmap(
    lambda k: st.tuples(st.just(k), st.sampled_from([(v, True) for v in SHAPES[k][0]] + [(v, False) for v in SHAPES[k][1]])))


@given(drawn=st.lists(shaped, unique_by=lambda kv: kv[0], max_size=4))
@example(drawn=[("subscribe", ("topic", False))])  # subscribed to the topics "t", "o", "p", "i" and "c"
@example(drawn=[("takes_submissions", ("no", False))])  # "no" is true: it took submissions
@example(drawn=[("dead_letter", ("in", False))])  # every dead letter came back to the stage
def test_a_stage_setting_of_the_wrong_kind_is_refused_where_it_is_declared(drawn: list[tuple[str, Any]]) -> None:
    settings = {k: v for k, (v, _) in drawn}
    p = _declare("s", "in", "out", _noop, settings)
    assert (p is not None) == all(good for _, (_, good) in drawn), settings


#: a Worker's own arguments -> (good values, bad ones)
WORKER_ARGS: dict[str, tuple[list[Any], list[Any]]] = {
    "concurrency": ([1, 4, 1024], [0, -1, 2.5, 10**6, True, "2"]),  # (2.5 started no thread, 10**6 a million)
    "batch_size": ([None, 1, 100], [0, 101, 2.5, True]),
    "wait_s": ([None, 0, 0.05, 20], [math.nan, math.inf, -1, "1"]),
    "grace_s": ([0, 30.0], [math.nan, -1, None]),
    "idle_queues": ([None, ["in", "out"]], ["in", [5]]),  # ("in": read as the queues "i" and "n")
}
worker_args = st.sampled_from(sorted(WORKER_ARGS)).flatmap(lambda k: st.tuples(
    st.just(k), st.sampled_from([(v, True) for v in WORKER_ARGS[k][0]] + [(v, False) for v in WORKER_ARGS[k][1]])))


@given(drawn=st.lists(worker_args, unique_by=lambda kv: kv[0], max_size=3))
@example(drawn=[("concurrency", (2.5, False))])
def test_a_worker_starts_with_arguments_it_can_run_with_or_is_refused(drawn: list[tuple[str, Any]]) -> None:
    p = Pipeline("w")
    p.stage("s", source="in")(_noop)
    backend = memory_backend()
    try:
        Worker(p, "s", backend, **{k: v for k, (v, _) in drawn})
    except ConfigError:
        assert not all(good for _, (_, good) in drawn), drawn
        return
    assert all(good for _, (_, good) in drawn), drawn
