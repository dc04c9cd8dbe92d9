"""A batch's commit claims the next batch in its own transaction (SQLite, PostgreSQL): the
claim commits with the batch's writes or not at all, and what it claimed is handled next, or
comes back like any received message when the process dies first."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend, sqlite_backend
from orchestrator.base import Delivery
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.controllers.faults import CRASH_POINTS, Fault, FaultPlan
from orchestrator.controllers.worker import Worker
from orchestrator.errors import BackendUnavailable, SimulatedCrash

VISIBILITY_S = 30.0


def two_stages(max_receives: int = 5) -> Pipeline:
    p = Pipeline("prefetching")

    @p.stage("one", source="a", emit_to="b", visibility_timeout_s=VISIBILITY_S, max_receives=max_receives)
    def one(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.RUNNING, emit=[{"n": msg.payload["n"]}])

    @p.stage("two", source="b", visibility_timeout_s=VISIBILITY_S, max_receives=max_receives)
    def two(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.COMPLETED)

    return p


def submitted(backend: Backend, n: int, max_receives: int = 5) -> Pipeline:
    p = two_stages(max_receives)
    p.setup(backend)
    for i in range(n):
        p.submit(backend, job_id=f"j{i}", payload={"n": i}, queue="a")
    return p


def receive(backend: Backend, queue: str, n: int) -> list[Delivery]:
    return backend.transport.receive(queue, max_messages=n, wait_s=0, visibility_s=VISIBILITY_S)


def jobs_of(deliveries: list[Delivery]) -> list[str]:
    return [json.loads(d.body)["job_id"] for d in deliveries]


def test_the_commit_claims_the_next_batch_and_the_worker_handles_it_next(backend: Backend) -> None:
    # Given five jobs waiting on a stage
    p = submitted(backend, 5)
    ctrl = Controller(p, "one", backend)
    # When a batch of two is handled, asking for the next two
    outcomes = ctrl.handle_batch(receive(backend, "a", 2), prefetch=2)
    nxt = ctrl.take_prefetched()
    # Then the batch committed; where its unit of work is one transaction the commit claimed
    # the next two messages, leased as a receive leases them; elsewhere it claimed nothing
    assert outcomes == [Outcome.COMMITTED] * 2
    depth = backend.transport.depth("a")
    if backend.transactional:
        assert sorted(jobs_of(nxt)) == ["j2", "j3"]
        assert (depth.visible, depth.in_flight) == (1, 2)
        assert all(d.receive_count == 1 for d in nxt)
    else:
        assert nxt == []
        assert (depth.visible, depth.in_flight) == (3, 0)
    # and they are handed over once
    assert ctrl.take_prefetched() == []
    # and handled like any received batch
    if nxt:
        assert ctrl.handle_batch(nxt) == [Outcome.COMMITTED] * 2
        assert backend.transport.depth("a").total == 1


@pytest.mark.parametrize("point", ["after_commit", "after_emit"])
def test_a_crash_inside_the_unit_undoes_the_claim_with_the_commits(backend: Backend, point: str) -> None:
    # Given three jobs, and a crash inside the unit of work of the first one's batch
    p = submitted(backend, 3)
    ctrl = Controller(p, "one", backend, faults=FaultPlan.of([Fault(point, job_id="j0")]))
    # When its batch of one is handled, asking for the next two
    with pytest.raises(SimulatedCrash):
        ctrl.handle_batch(receive(backend, "a", 1), prefetch=2)
    # Then nothing was claimed for the next batch: the two others are still there to receive
    assert ctrl.take_prefetched() == []
    depth = backend.transport.depth("a")
    assert (depth.visible, depth.in_flight) == (2, 1)
    if backend.transactional:  # (and the unit left nothing else either)
        assert backend.transport.depth("b").total == 0


def test_a_crash_after_the_unit_leaves_the_claimed_batch_to_its_visibility_timeout(backend: Backend) -> None:
    # Given three jobs, and a crash just after the first one's unit of work
    clock = backend.clock
    assert isinstance(clock, SimClock)
    p = submitted(backend, 3)
    ctrl = Controller(p, "one", backend, faults=FaultPlan.of([Fault("after_ack", job_id="j0")]))
    with pytest.raises(SimulatedCrash):
        ctrl.handle_batch(receive(backend, "a", 1), prefetch=2)
    if not backend.transactional:
        return  # (nothing is claimed in a unit that is not one transaction)
    # When the process is gone (what it claimed is lost with it)
    # Then the claimed messages are in flight, and come back once their lease lapses
    assert receive(backend, "a", 10) == []
    clock.advance(VISIBILITY_S + 1)
    again = receive(backend, "a", 10)
    assert sorted(jobs_of(again)) == ["j1", "j2"] and all(d.receive_count == 2 for d in again)


class FailingReceives:
    """The backend's transport, its receives failing while ``failing`` is set."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def receive(self, *args: Any, **kw: Any) -> list[Delivery]:
        if self.failing:
            raise BackendUnavailable("the claim went wrong")
        got: list[Delivery] = self._inner.receive(*args, **kw)
        return got


def test_a_failed_claim_does_not_fail_the_commits_it_rode_with(backend: Backend) -> None:
    # Given two jobs, and a transport whose receives fail once the batch is in hand
    p = submitted(backend, 2)
    flaky = FailingReceives(backend.transport)
    b = dataclasses.replace(backend, transport=flaky)  # type: ignore[arg-type]
    ctrl = Controller(p, "one", b)
    batch = receive(b, "a", 1)
    flaky.failing = True
    # When the batch is handled, asking for the next one
    outcomes = ctrl.handle_batch(batch, prefetch=1)
    # Then the batch committed without it, and the other message is still waiting, unclaimed
    assert outcomes == [Outcome.COMMITTED]
    assert ctrl.take_prefetched() == []
    assert backend.store.get("j0").steps["one"].state == "committed"  # type: ignore[union-attr]
    depth = backend.transport.depth("a")
    assert (depth.visible, depth.in_flight) == (1, 0)


def test_a_stopping_worker_claims_nothing_more(backend: Backend) -> None:
    p = submitted(backend, 3)
    ctrl = Controller(p, "one", backend)
    outcomes = ctrl.handle_batch(receive(backend, "a", 1), should_stop=lambda: False, prefetch=lambda: 0)
    assert outcomes == [Outcome.COMMITTED] and ctrl.take_prefetched() == []
    stops = iter([False, True])  # the handler runs; the stop comes before the commit
    assert ctrl.handle_batch(receive(backend, "a", 1), should_stop=lambda: next(stops), prefetch=5) == \
        [Outcome.COMMITTED]
    assert ctrl.take_prefetched() == []
    assert backend.transport.depth("a").visible == 1


# -- the property: a worker's loop, prefetching, under crashes ------------------------------
faults = st.lists(st.tuples(st.sampled_from(CRASH_POINTS), st.integers(0, 7), st.sampled_from(["one", "two"])),
                  max_size=6)


@given(jobs=st.integers(1, 8), sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
       prefetch=st.lists(st.integers(0, 4), min_size=1, max_size=6), crashes=faults)
@example(jobs=1, sizes=[1], prefetch=[0], crashes=[("after_begin", 0, "two")] * 5)  # one message, crashed 5 times
def test_every_job_completes_once_however_batches_prefetch_and_crash(
        jobs: int, sizes: list[int], prefetch: list[int], crashes: list[tuple[str, int, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = SimClock()
        backend = sqlite_backend(Path(tmp) / "o.db", clock=clock)
        # A crash costs each message it held (its batch, and what its unit claimed) at most one
        # delivery, so with more receives allowed than crashes drawn no job is given up on: what
        # poisoning does after too many crashes is the poison property's business, not this one's
        p = submitted(backend, jobs, max_receives=len(crashes) + 2)
        plan = FaultPlan.of([Fault(point, stage=stage, job_id=f"j{j}") for point, j, stage in crashes])
        for turn, stage in enumerate(["one", "two"] * 2):  # a stage is restarted after the other ran
            drive(backend, Controller(p, stage, backend, faults=plan), sizes, prefetch, turn)
        for i in range(jobs):
            job = backend.store.get(f"j{i}")
            assert job is not None and job.status == JobStatus.COMPLETED, (i, job)
            commits = Counter(h.stage for h in job.history if h.event == "commit")
            assert commits == {"one": 1, "two": 1}, (i, commits)
        assert all(backend.transport.depth(q).total == 0 for q in ("a", "b"))
        backend.close()


def drive(backend: Backend, ctrl: Controller, sizes: list[int], prefetch: list[int], turn: int) -> None:
    """A worker's loop over one stage until its queue is empty: the prefetched batch first,
    else a receive; a crash drops the batch and what it claimed, as a dead process would.
    Checks that a crash inside the unit of work left no claim behind."""
    clock = backend.clock
    assert isinstance(clock, SimClock)
    source = ctrl.stage.source
    for n in range(200):
        batch = ctrl.take_prefetched() or receive(backend, source, sizes[(n + turn) % len(sizes)])
        if not batch:
            if backend.transport.depth(source).total == 0:
                return
            clock.advance(VISIBILITY_S + 1)  # what a dead worker held comes back
            continue
        in_flight = backend.transport.depth(source).in_flight
        try:
            ctrl.handle_batch(batch, prefetch=prefetch[(n + turn) % len(prefetch)])
        except SimulatedCrash as crash:
            claimed = ctrl.take_prefetched()
            if crash.point in ("after_commit", "after_emit"):  # inside the transaction
                assert claimed == [] and backend.transport.depth(source).in_flight <= in_flight
    raise AssertionError(f"{ctrl.stage.name} did not drain")


def test_a_worker_that_stops_hands_the_claimed_batch_back_at_once(tmp_path: Path) -> None:
    # Given a worker on the embedded default, four jobs waiting, and a stop that comes just
    # after the first batch's commit (which claimed the next batch in its transaction)
    backend = sqlite_backend(tmp_path / "o.db")
    p = submitted(backend, 4)
    committed: list[str] = []

    class StopAfterTheFirstCommit:
        def on_commit(self, stage: Any, delivery: Delivery) -> None:
            committed.append(delivery.message_id)
            worker.request_stop()

    worker = Worker(p, "one", backend, wait_s=0.05, batch_size=2, middleware=[StopAfterTheFirstCommit()])
    # When it runs until it stops
    worker.run()
    # Then it committed the first batch only, and the two messages it had claimed for the next
    # are visible again now, not after their visibility timeout
    assert len(committed) == 2
    depth = backend.transport.depth("a")
    assert (depth.visible, depth.in_flight) == (2, 0)
    again = receive(backend, "a", 10)
    assert len(again) == 2 and all(d.receive_count == 2 for d in again)  # (they were received once)
