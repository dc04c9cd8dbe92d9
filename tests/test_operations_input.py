"""What the operator's calls in code are handed (purge, sweep, a dead-letter listing or redrive,
a schedule, a bulk submit) either works or is refused with a typed error naming the argument,
before anything changes: never a driver's OverflowError, never a purge of every job."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from helpers import drain
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator import ConfigError, JobStatus, Pipeline, Result
from orchestrator.backends import Backend, sqlite_backend
from orchestrator.clock import SimClock
from orchestrator.controllers.submit import submit, submit_many
from orchestrator.errors import InvalidArgument, InvalidSubmission
from orchestrator.ops import dlq, purge, sweep

#: a value and whether it is an age an operation can act on
ages = st.sampled_from([(0, True), (1.5, True), (10**9, True), (math.nan, False), (math.inf, False),
                        (-1, False), ("5", False), (True, False), (None, False)])
counts = st.sampled_from([(0, True), (3, True), (2**70, True), (-1, False), (2.5, False), ("5", False),
                          (True, False), (None, False)])


def _world(tmp: Any) -> tuple[Pipeline, Backend]:
    """Jobs COMPLETED, FAILED (with a dead letter) and PENDING, on SQLite an hour ago."""
    p = Pipeline("ops")
    p.stage("s", source="in", max_receives=1)(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED) if msg.payload.get("ok") else 1 / 0)
    backend = sqlite_backend(tmp / "ops.db", clock=SimClock())
    p.setup(backend)
    p.submit(backend, job_id="done", payload={"ok": True}, queue="in")
    p.submit(backend, job_id="failed", payload={}, queue="in")
    drain(backend, p, "s")
    p.submit(backend, job_id="waiting", payload={"ok": True}, queue="in")
    backend.clock.advance(3600)  # type: ignore[attr-defined]
    return p, backend


def _state(backend: Backend) -> tuple[dict[str, str], int]:
    return {r.job_id: r.status.value for r in backend.store.query()}, backend.transport.depth("in-dlq").total


def _acted_on(backend: Backend, good: bool, name: str, call: Callable[[], Any]) -> Any:
    """What ``call`` answers, when the argument was good; None when it was refused, as it must
    have been, with ``InvalidArgument`` naming it and nothing changed."""
    before = _state(backend)
    try:
        got = call()
    except InvalidArgument as exc:
        assert not good and name in str(exc)
        assert _state(backend) == before
        return None
    finally:
        backend.close()
    assert good
    return got


@given(age=ages, what=st.sampled_from(["purge", "sweep"]))
@example(age=(math.nan, False), what="purge")  # NaN compares false with every time: it purged every finished job
def test_an_age_is_acted_on_or_refused_before_anything_changes(tmp_path_factory: pytest.TempPathFactory,
                                                               age: tuple[Any, bool], what: str) -> None:
    p, backend = _world(tmp_path_factory.mktemp("ops"))
    value, good = age
    report = _acted_on(backend, good, "older_than_s", lambda: purge.purge(p, backend, older_than_s=value)
                       if what == "purge" else sweep.sweep(p, backend, older_than_s=value))
    if report is not None and what == "purge":  # only the finished jobs older than the age go
        assert sorted(report.jobs) == (["done", "failed"] if value <= 3600 else [])


@given(limit=counts, what=st.sampled_from(["show", "redrive"]))
@example(limit=(2**70, True), what="show")  # OverflowError from SQLite's LIMIT
def test_a_count_is_acted_on_or_refused_before_anything_changes(tmp_path_factory: pytest.TempPathFactory,
                                                                limit: tuple[Any, bool], what: str) -> None:
    p, backend = _world(tmp_path_factory.mktemp("ops"))
    value, good = limit

    def call() -> int:
        if what == "show":
            return len(dlq.show(backend, "in-dlq", limit=value))
        result = dlq.redrive(backend, p, "in-dlq", limit=value)
        return len(result.redriven) + len(result.refused)

    got = _acted_on(backend, good, "limit", call)
    assert got is None or got == min(value, 1)  # one dead letter there


SCHEDULES: list[tuple[dict[str, Any], bool]] = [
    ({"cron": "0 * * * *"}, True),
    ({"every": 60, "payload": {"n": 1}, "user_id": "alice", "grace_s": 5}, True),
    ({"cron": 5}, False),
    ({"cron": "0 * * * *", "payload": [1]}, False),
    ({"cron": "0 * * * *", "payload": {"n": math.nan}}, False),
    ({"cron": "0 * * * *", "user_id": "a\x00"}, False),
    ({"cron": "0 * * * *", "queue": "q\ud800"}, False),
    ({"cron": "0 * * * *", "timezone": 5}, False),
    ({"cron": "0 * * * *", "priority": True}, False),
    ({"cron": "0 * * * *", "max_catch_up": 2.5}, False),
    ({"cron": "0 * * * *", "grace_s": math.nan}, False),
]


@given(case=st.sampled_from(SCHEDULES), name=st.sampled_from([("nightly", True), ("a\x00", False),
                                                               ("x@y", False), ("", False), (5, False)]))
def test_a_schedule_is_declared_or_refused_with_config_error(case: tuple[dict[str, Any], bool],
                                                             name: tuple[Any, bool]) -> None:
    kwargs, good = case
    p = Pipeline("sched")
    p.stage("s", source="in")(lambda ctx, msg: Result())
    try:
        p.schedule(name[0], **{"queue": "in", **kwargs})
    except ConfigError:
        assert not (good and name[1])
        return
    assert good and name[1]


@pytest.mark.parametrize("jobs", [None, "abc", {"j": {}}, 5])
def test_a_bulk_submit_of_no_list_is_refused(tmp_path: Any, jobs: Any) -> None:
    p = Pipeline("bulk")
    p.stage("s", source="in")(lambda ctx, msg: Result())
    backend = sqlite_backend(tmp_path / "b.db")
    p.setup(backend)
    with pytest.raises(InvalidSubmission, match="jobs must be a list"):
        p.submit_many(backend, jobs, queue="in")
    assert backend.store.query() == []


#: (argument, a value, whether a submit takes it)
SUBMIT_ARGS = st.sampled_from([
    ("priority", 0, True), ("priority", 9, True), ("priority", None, False), ("priority", 10, False),
    ("priority", -1, False), ("priority", 2.5, False), ("priority", True, False), ("priority", "1", False),
    ("delay_s", 0, True), ("delay_s", 3600.5, True), ("delay_s", None, False), ("delay_s", math.nan, False),
    ("delay_s", -1, False), ("delay_s", "5", False), ("user_id", "ann", True), ("user_id", None, True),
    ("user_id", 5, False), ("user_id", "", False), ("user_id", "a\x00", False),
])


@given(arg=SUBMIT_ARGS, many=st.booleans())
def test_a_submit_takes_its_timing_and_owner_or_refuses_them_with_invalid_submission(
        tmp_path_factory: pytest.TempPathFactory, arg: tuple[str, Any, bool], many: bool) -> None:
    name, value, good = arg
    p = Pipeline("ops")
    p.stage("s", source="in")(lambda ctx, msg: None)
    backend = sqlite_backend(tmp_path_factory.mktemp("s") / "s.db", clock=SimClock())
    p.setup(backend)
    try:
        if many:
            submit_many(backend, [("j", {})], queue="in", **{name: value})
        else:
            submit(backend, job_id="j", payload={}, queue="in", **{name: value})
    except InvalidSubmission as exc:  # (InvalidPayload is one)
        assert not good, exc
        assert backend.store.get("j") is None and backend.transport.depth("in").total == 0  # nothing written
    else:
        assert good, f"{name}={value!r} was taken"
        assert backend.store.get("j") is not None and backend.transport.depth("in").total == 1
    finally:
        backend.close()
