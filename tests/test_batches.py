"""One protocol for a batch: a poison message is settled on its own, and one (job, stage)
runs its handler once even when two copies of its message arrive in one batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_controller import dead_letters, two_stage

from orchestrator import JobStatus, Pipeline, Result
from orchestrator.backends import Backend, sqlite_backend
from orchestrator.base import Outgoing
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.envelope import Envelope

HUGE_INT = '{"v": 1, "task": "numbers", "job_id": "huge", "payload": {"x": 1' + "0" * 5000 + "}}"
SURROGATE = '{"v": 1, "task": "numbers", "job_id": "bad\\ud800id", "payload": {"x": 1}}'


@pytest.mark.parametrize("poison", ["huge_int", "surrogate", "oversize"])
def test_one_poison_message_is_dead_lettered_and_its_nine_batch_mates_commit(backend: Backend, poison: str) -> None:
    # Given nine good jobs and one poison message in the same queue, received as one batch
    p = two_stage()
    p.setup(backend)
    for i in range(9):
        p.submit(backend, job_id=f"good-{i}", payload={"x": i}, queue="numbers")
    body = {"huge_int": HUGE_INT, "surrogate": SURROGATE,
            "oversize": Envelope(task="numbers", job_id="big", payload={"blob": "x" * 5000}).to_json()}[poison]
    backend.transport.send("numbers", Outgoing(body=body, message_id="poison"))
    if poison == "oversize":  # already in the queue when the limits went down
        backend.transport.max_body_bytes = 2000  # type: ignore[misc]
        p.get("double").max_body_bytes = 2000
    batch = backend.transport.receive("numbers", max_messages=10, wait_s=0, visibility_s=30)
    assert len(batch) == 10
    # When the batch is processed once
    outcomes = Controller(p, "double", backend).handle_batch(batch)
    # Then the poison is dead-lettered with its reason, at its first attempt, and the rest committed
    assert sorted(outcomes) == sorted([Outcome.COMMITTED] * 9 + [Outcome.DEAD_LETTERED])
    [(dead, why)] = dead_letters(backend, "numbers-dlq")
    assert why.startswith("malformed message:"), why
    if poison == "oversize":
        [d] = backend.transport.peek("numbers-dlq", 1)
        assert d.attributes["truncated_from_bytes"] == str(len(body)) and body.startswith(dead)
    assert backend.transport.depth("numbers").total == 0
    for i in range(9):
        job = backend.store.get(f"good-{i}")
        assert job is not None and job.steps["double"].state == "committed"


def test_two_copies_of_one_request_in_one_batch_run_the_handler_once(backend: Backend) -> None:
    # Given a stage whose handler has an effect that must happen once (archive, then delete)
    calls: list[str] = []
    p = Pipeline("t")

    @p.stage("archive", source="in", emit_to="out")
    def archive(ctx, msg):  # type: ignore[no-untyped-def]
        calls.append(msg.id)
        return Result(status=JobStatus.COMPLETED, fields={"archive_id": f"a-{len(calls)}"}, emit=[{"done": True}])

    p.setup(backend)
    backend.store.create("j")
    # two copies of the request for one job (different message ids, as two SNS deliveries get)
    for n in (1, 2):
        env = Envelope(id=f"copy-{n}", task="archive", job_id="j", payload={})
        backend.transport.send("in", Outgoing(body=env.to_json(), message_id=env.id))
    batch = backend.transport.receive("in", max_messages=10, wait_s=0, visibility_s=30)
    assert len(batch) == 2
    # When both are processed in one batch
    outcomes = Controller(p, "archive", backend).handle_batch(batch)
    # Then the handler ran once, the second copy replayed the first one's outcome
    assert calls == ["copy-1"]
    assert outcomes == [Outcome.COMMITTED, Outcome.DUPLICATE]
    job = backend.store.get("j")
    assert job is not None and job.fields["archive_id"] == "a-1" and job.commits("archive") == 1
    assert backend.transport.depth("in").total == 0
    out = backend.transport.peek("out", 10)
    assert len(out) == 1 and json.loads(out[0].body)["payload"] == {"done": True}


def test_a_duplicate_on_the_embedded_default_is_acked_without_sending_the_outbox_again(tmp_path: Path) -> None:
    # Given a committed step whose emitted message was already consumed downstream
    backend = sqlite_backend(tmp_path / "o.db", clock=SimClock())
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j", payload={"x": 2}, queue="numbers")
    [d] = backend.transport.receive("numbers", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, "double", backend).handle(d) == Outcome.COMMITTED
    [out] = backend.transport.receive("doubled", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, "finish", backend).handle(out) == Outcome.COMMITTED
    # When a late copy of the first message arrives (redelivered by an operator, say)
    backend.transport.send("numbers", Outgoing(body=d.body, message_id="late-copy"))
    [late] = backend.transport.receive("numbers", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, "double", backend).handle(late) == Outcome.DUPLICATE
    # Then nothing is published again: commit, emit and ack were one transaction
    assert backend.transport.depth("doubled").total == 0


def test_a_settled_delivery_reports_no_lost_lease_while_its_batch_mates_run(backend: Backend) -> None:
    # Given a batch whose first message fails at once and whose second handler runs for a while
    from orchestrator import PermanentError
    from orchestrator.middleware import Middleware

    lost: list[str] = []

    class Watch(Middleware):
        def on_lease_lost(self, stage, delivery):  # type: ignore[no-untyped-def]
            lost.append(delivery.message_id)

    p = Pipeline("t", middleware=[Watch()])

    @p.stage("s", source="in", visibility_timeout_s=3)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.job_id == "fails":
            raise PermanentError("bad input")
        ctx.clock.sleep(10)  # several heartbeats of every lease still held
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    p.submit(backend, job_id="fails", payload={}, queue="in")
    p.submit(backend, job_id="slow", payload={}, queue="in")
    batch = backend.transport.receive("in", max_messages=10, wait_s=0, visibility_s=3)
    # When the batch is processed
    outcomes = Controller(p, "s", backend).handle_batch(batch)
    # Then the failed message's heartbeat stopped with it: no lease is reported lost
    assert outcomes == [Outcome.FAILED, Outcome.COMMITTED]
    assert lost == []


def test_middleware_hooks_reach_subclasses_duck_typed_objects_and_instance_attributes(
        backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    # Given three middleware: a subclass overriding one hook, an object that is no Middleware
    # but has the hook, and a plain Middleware whose hook was set on the instance
    from orchestrator.middleware import Middleware

    calls: list[str] = []

    class Sub(Middleware):
        def on_commit(self, stage, delivery):  # type: ignore[no-untyped-def]
            calls.append("sub")

    class Duck:
        def on_commit(self, stage, delivery):  # type: ignore[no-untyped-def]
            calls.append("duck")

    plain = Middleware()
    plain.on_commit = lambda stage, delivery: calls.append("instance")  # type: ignore[method-assign]
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")
    [d] = backend.transport.receive("numbers", max_messages=1, wait_s=0, visibility_s=30)
    # When a message commits (and the duck lacks every other hook the controller calls)
    outcome = Controller(p, "double", backend, middleware=[Sub(), Duck(), plain]).handle(d)  # type: ignore[list-item]
    # Then each one's on_commit ran once, and nothing else was called on the duck
    assert outcome == Outcome.COMMITTED
    assert calls == ["sub", "duck", "instance"]
    captured = capsys.readouterr()
    assert "middleware hook failed" not in captured.out + captured.err
