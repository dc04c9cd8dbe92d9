"""Redrive is safe: only dead-letter queues, never a job moved backwards, never a live message lost."""

from __future__ import annotations

import pytest
from helpers import drain
from hypothesis import given
from hypothesis import strategies as st
from test_controller import two_stage

from orchestrator.backends import Backend
from orchestrator.base import Outgoing
from orchestrator.controllers.controller import Outcome
from orchestrator.errors import NotADeadLetterQueue
from orchestrator.ops.dlq import redrive
from orchestrator.status import JobStatus
from orchestrator.transports.common import DEAD_LETTER_REASON


def test_redriving_a_live_queue_is_refused_and_its_messages_stay(backend: Backend) -> None:
    # Given a job whose first message waits in the live queue
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")
    # When someone redrives the live queue (or a queue that does not exist)
    for queue in ("numbers", "doubled", "nowhere"):
        with pytest.raises(NotADeadLetterQueue, match=repr(queue)):
            redrive(backend, p, queue)
    # Then the message is still there for its worker, and the job untouched
    assert backend.transport.depth("numbers").visible == 1
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.PENDING and [h.event for h in job.history] == ["created"]
    assert drain(backend, p, "double") == [Outcome.COMMITTED]


def test_a_stale_dead_letter_of_a_running_job_is_redriven_without_moving_the_job_back(backend: Backend) -> None:
    # Given a job that passed its first stage (RUNNING, its next message queued), and a stale
    # copy of its first message in the first stage's dead-letter queue
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j", payload={"x": 4}, queue="numbers")
    [first] = backend.transport.peek("numbers", 1)
    assert drain(backend, p, "double") == [Outcome.COMMITTED]
    backend.transport.send("numbers-dlq", Outgoing(body=first.body, message_id="stale-copy", attributes={
        DEAD_LETTER_REASON: "gave up after 3 attempts", "source_queue": "numbers"}))
    before = backend.store.get("j")
    assert before is not None and before.status == JobStatus.RUNNING
    # When the dead-letter queue is redriven
    done = redrive(backend, p, "numbers-dlq")
    # Then the job is still RUNNING with its step and history as they were, its next message
    # is still queued, and the copy is settled as a duplicate
    assert done.redriven == ["stale-copy"] and done.refused == []
    after = backend.store.get("j")
    assert after is not None and after.status == JobStatus.RUNNING
    assert after.steps == before.steps and after.history == before.history
    assert backend.transport.depth("doubled").visible == 1
    assert drain(backend, p, "double") == [Outcome.DUPLICATE]
    assert drain(backend, p, "finish") == [Outcome.COMMITTED]
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED and job.commits("double") == 1


def test_a_cancelled_jobs_dead_letter_is_refused_and_stays(backend: Backend) -> None:
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")
    [first] = backend.transport.peek("numbers", 1)
    p.cancel(backend, "j", reason="not needed")
    backend.transport.send("numbers-dlq", Outgoing(body=first.body, message_id="copy", attributes={
        DEAD_LETTER_REASON: "x", "source_queue": "numbers"}))
    done = redrive(backend, p, "numbers-dlq")
    assert done.redriven == [] and done.refused == ["copy: job j is CANCELLED"]
    assert backend.transport.depth("numbers-dlq").total == 1
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.CANCELLED


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=40), st.booleans())
def test_a_dead_letter_queue_names_its_source_fifo_or_not(name: str, fifo: bool) -> None:
    from orchestrator.base import default_dead_letter, is_default_dead_letter, source_of_dead_letter

    queue = f"{name}.fifo" if fifo else name
    dlq = default_dead_letter(queue)
    assert is_default_dead_letter(dlq) and source_of_dead_letter(dlq) == queue
    assert dlq.endswith(".fifo") == fifo  # SQS: a FIFO queue's dead letters go to a FIFO queue
