"""Bulk submission (``submit_many``, ``submit --jobs``) is ``submit`` over each item, written
in bulk: the same jobs, the same first messages, the same idempotence and the same refusals."""

from __future__ import annotations

import itertools
import json

import pytest
from helpers import drain
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator import Pipeline, Result
from orchestrator.backends import Backend
from orchestrator.base import QueueSpec
from orchestrator.clock import SimClock
from orchestrator.controllers.submit import BULK_CHUNK, submit, submit_many
from orchestrator.errors import DuplicateJob, InvalidPayload, InvalidSubmission
from orchestrator.status import JobStatus

_runs = itertools.count()

items = st.lists(st.tuples(st.sampled_from([f"j{i}" for i in range(8)]),
                           st.fixed_dictionaries({"x": st.integers(0, 2)}),
                           st.sampled_from([None, "ann", "bob"])), max_size=12)


def _queue_bodies(backend: Backend, queue: str) -> dict[str, dict[str, object]]:
    got = backend.transport.receive(queue, max_messages=100, wait_s=0, visibility_s=60)
    return {json.loads(d.body)["job_id"]: json.loads(d.body)["payload"] for d in got}


# each example works under job ids and queues of its own, so the backend is shared safely
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=items, again=items)
# an existing job's id twice in one call, once without its user: each copy is judged against the
# stored job, as one submit at a time judges it (not the second copy against the first)
@example(jobs=[("j0", {"x": 0}, "ann")], again=[("j0", {"x": 0}, None), ("j0", {"x": 0}, "ann")])
def test_submit_many_does_what_submit_does_for_each_item(backend: Backend, jobs: list, again: list) -> None:
    n = next(_runs)
    bulk_q, one_q = f"bulk{n}", f"one{n}"
    for q in (bulk_q, one_q):
        backend.transport.ensure_queue(QueueSpec(q))

    def each(q: str, batch: list, prefix: str) -> int | type[Exception]:
        """submit over each item, in one unit (a refusal leaves none of them, as in bulk)"""
        try:
            with backend.unit():
                return sum(submit(backend, job_id=prefix + j, payload=p, queue=q, user_id=u)[1] for j, p, u in batch)
        except DuplicateJob as exc:
            return type(exc)

    def bulk(q: str, batch: list, prefix: str) -> int | type[Exception]:
        try:
            return submit_many(backend, [(prefix + j, p, u) for j, p, u in batch], queue=q)
        except DuplicateJob as exc:
            return type(exc)

    for batch in (jobs, again):  # a second call resubmits some of the same ids
        expected = each(one_q, batch, f"o{n}-")
        assert bulk(bulk_q, batch, f"b{n}-") == expected
        if expected is DuplicateJob and not backend.transactional:
            return  # one by one, the items before the refused one were written; in bulk none was
    # the same jobs, with the same owners and origins, and the same first messages
    ones = {r.job_id[len(f"o{n}-"):]: r for r in backend.store.query() if r.job_id.startswith(f"o{n}-")}
    bulks = {r.job_id[len(f"b{n}-"):]: r for r in backend.store.query() if r.job_id.startswith(f"b{n}-")}
    assert ones.keys() == bulks.keys()
    for j, rec in ones.items():
        assert bulks[j].status == rec.status == JobStatus.PENDING
        assert bulks[j].user_id == rec.user_id
        assert rec.origin is not None and bulks[j].origin is not None
        assert json.loads(bulks[j].origin.body)["payload"] == json.loads(rec.origin.body)["payload"]
    bodies_one = {k[len(f"o{n}-"):]: v for k, v in _queue_bodies(backend, one_q).items()}
    bodies_bulk = {k[len(f"b{n}-"):]: v for k, v in _queue_bodies(backend, bulk_q).items()}
    assert bodies_bulk == bodies_one and set(bodies_bulk) == set(ones)


def test_a_bad_item_refuses_the_whole_bulk_before_anything_is_written(backend: Backend) -> None:
    backend.transport.ensure_queue(QueueSpec("in"))
    with pytest.raises(InvalidPayload):
        submit_many(backend, [("good", {"x": 1}), ("bad", {"x": float("nan")})], queue="in")
    assert backend.store.get("good") is None
    assert backend.transport.depth("in").total == 0


@pytest.mark.parametrize("bad", [("j",), "j", {"job_id": "j"}, ("j", {}, "ann", "extra")], ids=repr)
def test_an_item_of_the_wrong_shape_is_refused_with_its_place_before_anything_is_written(
        backend: Backend, bad: object) -> None:
    backend.transport.ensure_queue(QueueSpec("in"))
    with pytest.raises(InvalidSubmission, match=r"jobs\[1\]: an item is \(job id, payload\)"):
        submit_many(backend, [("good", {"x": 1}), bad], queue="in")  # type: ignore[list-item]
    assert backend.store.get("good") is None
    assert backend.transport.depth("in").total == 0


def test_a_bulk_larger_than_a_chunk_submits_every_job_once(backend: Backend) -> None:
    p = Pipeline("bulk")
    backend.transport.ensure_queue(QueueSpec("in"))
    n = BULK_CHUNK * 2 + 7
    assert p.submit_many(backend, [(f"k{i}", {"i": i}) for i in range(n)], queue="in", priority=3) == n
    assert p.submit_many(backend, [(f"k{i}", {"i": i}) for i in range(n)], queue="in") == 0  # idempotent
    assert backend.transport.depth("in").total == n
    assert len([r for r in backend.store.query() if r.job_id.startswith("k")]) == n


class _LostSend(Exception):
    """The process died between writing the job and sending its first message."""


# each example works under a job id and queue of its own, so the backend is shared safely
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lost=st.booleans(), later=st.lists(st.tuples(st.floats(0, 7200), st.booleans()), max_size=5),
       bulk=st.booleans())
def test_resubmissions_at_any_later_time_send_the_job_one_first_message(
        backend: Backend, lost: bool, later: list[tuple[float, bool]], bulk: bool) -> None:
    # Given a job whose first send may have been lost, resubmitted at later times (a first
    # message's id says when it was made), the queue drained or not in between
    n = next(_runs)
    queue, job = f"first{n}", f"f{n}"
    p = Pipeline(f"first{n}")
    p.stage("done", source=queue)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    clock = backend.clock
    assert isinstance(clock, SimClock)

    def again() -> None:
        if bulk:
            submit_many(backend, [(job, {"x": 1})], queue=queue)
        else:
            submit(backend, job_id=job, payload={"x": 1}, queue=queue)

    if lost:
        sent = backend.transport.send_batch

        def dies(*args: object, **kwargs: object) -> list[str]:
            raise _LostSend()

        backend.transport.send_batch = dies  # type: ignore[method-assign]
        try:
            with pytest.raises(_LostSend):
                again()
        finally:
            backend.transport.send_batch = sent  # type: ignore[method-assign]
    else:
        again()
    for wait_s, drained in later:
        clock.advance(wait_s)
        again()
        # Then one copy at most waits, and it is the job's first message, as the job keeps it
        rec = backend.store.get(job)
        assert rec is not None and rec.origin is not None
        waiting = backend.transport.peek(queue, 10)
        assert len(waiting) <= 1
        assert [(m.message_id, m.body) for m in waiting] in ([], [(rec.origin.id, rec.origin.body)])
        if drained:
            drain(backend, p, "done")
    drain(backend, p, "done")
    # And the job is done once, whoever sent what
    rec = backend.store.get(job)
    if rec is None:  # the first submit's unit was undone with its send, and none followed
        assert lost and not later and backend.transactional
        return
    if rec.status == JobStatus.PENDING:  # written without its message, and never resubmitted
        assert lost and not later and not backend.transactional
        return
    assert rec.status == JobStatus.COMPLETED and rec.commits("done") == 1
