"""``begin="deferred"`` (the default): a begin is written only for a round still running
``begin_after_s`` after it started, for every handler not finished by then; a redelivery, and a
step that fails, raises or snoozes, is begun before that is written."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import drain
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend, memory_backend, postgres_backend, sqlite_backend
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.errors import BackendUnavailable, SimulatedCrash


class CountingStore:
    """The backend's store, counting begin writes (and failing them, when told)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.begins: list[list[str]] = []
        self.fail_begins = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def begin_docs(self, items: Any, **kw: Any) -> Any:
        self.begins.append([i.job_id for i in items])
        if self.fail_begins:
            raise BackendUnavailable("the database is down")
        return self._inner.begin_docs(items, **kw)


def counted(backend: Backend) -> tuple[Backend, CountingStore]:
    store = CountingStore(backend.store)
    return dataclasses.replace(backend, store=store), store  # type: ignore[arg-type]


def test_a_fast_step_is_recorded_by_its_commit_alone(backend: Backend) -> None:
    # Given a deferred stage (the default) with a handler that takes a quarter of a second, and
    # two jobs
    p = Pipeline("fast")

    @p.stage("s", source="in")
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        ctx.clock.sleep(0.25)
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    for j in ("a", "b"):
        p.submit(backend, job_id=j, payload={}, queue="in")
    b, store = counted(backend)
    # When they are handled
    assert drain(b, p, "s") == [Outcome.COMMITTED, Outcome.COMMITTED]
    # Then no begin was written, and each record reads as an eager stage's does
    assert store.begins == []
    took = []
    for j in ("a", "b"):
        job = backend.store.get(j)
        assert job is not None and job.status == JobStatus.COMPLETED
        assert [h.event for h in job.history] == ["created", "begin", "commit"]
        step = job.steps["s"]
        assert step.state == "committed" and step.attempt == 1
        assert step.started_at is not None and step.finished_at is not None
        took.append(step.finished_at - step.started_at)
    # from its handler's start to the round's commit, though no begin wrote when it started
    assert sorted(took) == pytest.approx([0.25, 0.5])


def test_a_failed_attempt_and_its_redelivery_are_on_the_record_as_an_eager_stages(backend: Backend) -> None:
    # Given a deferred stage whose handler fails once; the second attempt looks at its own record
    p = Pipeline("again")
    seen: list[tuple[str, str | None, int]] = []

    @p.stage("s", source="in", retry_base_s=1, retry_max_s=1)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        step = backend.store.get(msg.job_id).steps.get("s")  # type: ignore[union-attr]
        seen.append((backend.store.get(msg.job_id).status.value,  # type: ignore[union-attr]
                     step.claim if step else None, ctx.delivery.receive_count))
        if ctx.delivery.receive_count == 1:
            raise RuntimeError("not this time")
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    # When it runs to the end
    assert drain(backend, p, "s") == [Outcome.RETRIED, Outcome.COMMITTED]
    # Then the first attempt ran unbegun, the redelivery was begun before its handler
    assert seen[0] == ("PENDING", None, 1)
    assert seen[1][0] == "RUNNING" and seen[1][1] is not None and seen[1][2] == 2
    # and the history is an eager stage's: each attempt's claim, what it raised, the commit
    job = backend.store.get("j")
    assert job is not None
    assert [h.event for h in job.history] == ["created", "begin", "retried", "claimed", "commit"]


# A round of handlers, each sleeping so long on the simulated clock; the deferred begin is due
# ``after`` seconds after the round started.
durations = st.lists(st.sampled_from([0.0, 0.1, 0.4, 0.5, 1.0, 2.5]), min_size=1, max_size=8)
afters = st.sampled_from([0.2, 0.5, 1.0, 3.0])


def check_round(make: Any, took: list[float], after: float) -> None:
    clock = SimClock()
    backend = make(clock)
    p = Pipeline("round")
    observed: dict[str, tuple[str, str | None]] = {}

    @p.stage("s", source="in", begin_after_s=after, visibility_timeout_s=30)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        ctx.clock.sleep(took[int(msg.job_id)])
        job = backend.store.get(msg.job_id)
        step = job.steps.get("s")
        observed[msg.job_id] = (job.status.value, step.claim if step else None)
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    for i in range(len(took)):
        p.submit(backend, job_id=str(i), payload={}, queue="in")
    b, store = counted(backend)
    got = backend.transport.receive("in", max_messages=len(took), wait_s=0, visibility_s=30)
    start = clock.now()
    by_job = {json.loads(d.body)["job_id"]: d for d in got}
    assert Controller(p, "s", b).handle_batch(got) == [Outcome.COMMITTED] * len(got)
    # a handler still running when the begin fell due was begun by then, and only such a one
    due, t, ends = start + after, start, {}
    for i, d in enumerate(took):  # the clock's own arithmetic: when each handler returned
        t = t + d
        ends[str(i)] = t
    for job_id, end in ends.items():
        status, claim = observed[job_id]
        if end >= due:
            assert (status, claim) == ("RUNNING", by_job[job_id].receipt), (job_id, end, due)
        else:
            assert (status, claim) == ("PENDING", None), (job_id, end, due)
    # one begin write at most for the round, naming exactly those
    assert len(store.begins) <= 1
    assert sorted(j for write in store.begins for j in write) == sorted(j for j, end in ends.items() if end >= due)
    # and every step was committed once, started when its round did if it was begun
    for job_id, end in ends.items():
        job = backend.store.get(job_id)
        assert job is not None and job.status == JobStatus.COMPLETED and job.commits("s") == 1
        if end >= due:
            assert job.steps["s"].started_at == start
    backend.close()


@settings(max_examples=40, deadline=None)
@given(took=durations, after=afters)
def test_a_round_begins_exactly_the_handlers_still_running_when_its_begin_falls_due(took: list[float],
                                                                                     after: float) -> None:
    check_round(memory_backend, took, after)


@settings(max_examples=15, deadline=None)
@given(took=durations, after=afters)
def test_the_same_holds_on_sqlite(took: list[float], after: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_round(lambda clock: sqlite_backend(Path(tmp) / "o.db", clock=clock), took, after)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_on_the_system_clock_a_slow_handler_shows_running_while_it_runs(kind: str, tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    # Given a deferred stage on the real clock: the begin is written by the timer thread while
    # the handler's thread is busy (and reads the store itself)
    backend = (sqlite_backend(tmp_path / "o.db") if kind == "sqlite"
               else postgres_backend(request.getfixturevalue("pg_url")))
    p = Pipeline("slow")
    seen: list[str] = []
    done = threading.Event()

    @p.stage("s", source="in", begin_after_s=0.1)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        seen.append(backend.store.get("j").status.value)  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and backend.store.get("j").status != JobStatus.RUNNING:  # type: ignore[union-attr]
            time.sleep(0.02)
        seen.append(backend.store.get("j").status.value)  # type: ignore[union-attr]
        done.set()
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    got = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=30)
    # When it is handled
    assert Controller(p, "s", backend).handle_batch(got) == [Outcome.COMMITTED]
    # Then it saw PENDING at its start and RUNNING once the begin fell due; the job completed
    assert done.is_set() and seen == ["PENDING", "RUNNING"]
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED and job.commits("s") == 1
    backend.close()


def test_an_outage_met_by_a_deferred_begin_leaves_the_steps_to_their_commits() -> None:
    # Given a slow round whose deferred begin meets an outage
    clock = SimClock()
    backend = memory_backend(clock)
    p = Pipeline("outage")
    runs: Counter[str] = Counter()

    @p.stage("s", source="in", begin_after_s=0.5, visibility_timeout_s=10)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        runs[msg.job_id] += 1
        ctx.clock.sleep(1.0)
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    for j in ("a", "b"):
        p.submit(backend, job_id=j, payload={}, queue="in")
    b, store = counted(backend)
    store.fail_begins = True
    got = backend.transport.receive("in", max_messages=2, wait_s=0, visibility_s=10)
    # When it is handled
    outcomes = Controller(p, "s", b).handle_batch(got)
    # Then the begin was tried once, and the round's commits recorded both steps: no handler
    # ran twice for want of a begin
    assert len(store.begins) == 1 and outcomes == [Outcome.COMMITTED, Outcome.COMMITTED]
    for j in ("a", "b"):
        job = backend.store.get(j)
        assert job is not None and job.status == JobStatus.COMPLETED and job.commits("s") == 1
        assert job.steps["s"].attempt == 1
    assert runs == {"a": 1, "b": 1} and backend.transport.depth("in").total == 0


def test_a_crash_inside_a_deferred_begin_is_the_rounds_crash() -> None:
    # Given a slow round whose deferred begin dies (a simulated crash of the process)
    clock = SimClock()
    backend = memory_backend(clock)
    p = Pipeline("crash")

    @p.stage("s", source="in", begin_after_s=0.5, visibility_timeout_s=10)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        ctx.clock.sleep(1.0)
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    p.submit(backend, job_id="a", payload={}, queue="in")
    b, store = counted(backend)

    def crash(items: Any, **kw: Any) -> Any:
        raise SimulatedCrash("inside the deferred begin")

    store.begin_docs = crash  # type: ignore[method-assign]
    got = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=10)
    # When it is handled, the crash comes out of the handler's thread: nothing was committed
    with pytest.raises(SimulatedCrash):
        Controller(p, "s", b).handle_batch(got)
    assert backend.store.get("a").status == JobStatus.PENDING  # type: ignore[union-attr]
    # and the message comes back and completes
    assert drain(backend, p, "s") == [Outcome.COMMITTED]
