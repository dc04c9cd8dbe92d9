"""The controller's protocol on the embedded backends: bad input, retries, fencing, leases."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from helpers import drain

from orchestrator import (
    ConfigError,
    Controller,
    Emit,
    Fault,
    FaultPlan,
    JobStatus,
    PermanentError,
    Pipeline,
    Result,
    SimulatedCrash,
    Worker,
)
from orchestrator.backends import Backend, sqlite_backend
from orchestrator.base import Outgoing
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Outcome
from orchestrator.envelope import Envelope


def two_stage(calls: dict[str, int] | None = None) -> Pipeline:
    p = Pipeline("t")
    calls = calls if calls is not None else {}

    @p.stage("double", source="numbers", emit_to="doubled", max_receives=3, visibility_timeout_s=30, retry_base_s=1,
             retry_max_s=10)
    def double(ctx, msg):  # type: ignore[no-untyped-def]
        calls[msg.job_id] = calls.get(msg.job_id, 0) + 1
        x = msg.payload["x"]
        if x == "permanent":
            raise PermanentError("x must be a number")
        if x == "boom":
            raise RuntimeError("handler exploded")
        return Result(status=JobStatus.RUNNING, fields={"y": x * 2}, emit=[{"y": x * 2}])

    @p.stage("finish", source="doubled")
    def finish(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.COMPLETED, fields={"z": msg.payload["y"] + 1})

    return p


def dead_letters(backend: Backend, queue: str) -> list[tuple[str, str]]:
    return [(d.body, d.attributes["dead_letter_reason"]) for d in backend.transport.peek(queue, 100)]


def test_a_job_flows_through_two_stages(backend: Backend) -> None:
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={"x": 5}, queue="numbers", user_id="ann")
    assert drain(backend, p, "double") == [Outcome.COMMITTED]
    assert drain(backend, p, "finish") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields == {"y": 10, "z": 11}
    assert job.user_id == "ann"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"hello": "world"}', "not an orchestrator envelope"),
        ('{"v": 1, "id": "m", "task": "numbers"}', "invalid envelope: job_id"),
        ('{"v": 1, "id": "m", "task": "numbers", "job_id": "j", "payload": "nope"}', "invalid envelope: payload"),
    ],
)
def test_malformed_messages_go_to_the_dead_letter_queue_with_their_reason(backend: Backend, body: str, reason: str) -> None:
    # Given a good job and a bad message in the same queue
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="good", payload={"x": 1}, queue="numbers")
    backend.transport.send("numbers", Outgoing(body=body))
    # When the stage drains its queue
    outcomes = drain(backend, p, "double")
    # Then the bad body is dead-lettered verbatim with the reason, and the good job is not disturbed
    assert sorted(outcomes) == sorted([Outcome.COMMITTED, Outcome.DEAD_LETTERED])
    [(dead_body, why)] = dead_letters(backend, "numbers-dlq")
    assert dead_body == body and reason in why
    good = backend.store.get("good")
    assert good is not None and good.steps["double"].state == "committed"


def test_an_oversize_body_is_dead_lettered(backend: Backend) -> None:
    p = Pipeline("t")
    p.stage("s", source="in", max_body_bytes=1024)(lambda ctx, msg: Result())
    p.setup(backend)
    env = Envelope(task="in", job_id="big", payload={"blob": "x" * 2000})
    backend.store.create("big")
    backend.transport.send("in", Outgoing(body=env.to_json()))
    assert drain(backend, p, "s") == [Outcome.DEAD_LETTERED]
    [(_, why)] = dead_letters(backend, "in-dlq")
    assert "over the 1024-byte limit" in why
    # and the job it names is FAILED with the reason, not left PENDING for a message that is gone
    job = backend.store.get("big")
    assert job is not None and job.status == JobStatus.FAILED and "over the 1024-byte limit" in str(job.history[-1].reason)


def test_a_stray_message_with_an_unknown_task_is_dead_lettered_without_touching_its_job(backend: Backend) -> None:
    # Given a healthy job of this pipeline, half-way through
    p = two_stage()
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={"x": 1}, queue="numbers")
    assert drain(backend, p, "double") == [Outcome.COMMITTED]
    before = backend.store.get("j1")
    # When a message addressed to some other stage arrives for it
    env = Envelope(task="somewhere-else", job_id="j1", payload={"x": 1})
    backend.transport.send("numbers", Outgoing(body=env.to_json(), message_id=env.id))
    assert drain(backend, p, "double") == [Outcome.DEAD_LETTERED]
    # Then it is in the dead-letter queue with the reason, and the job is as it was
    [(_, why)] = dead_letters(backend, "numbers-dlq")
    assert "unknown task 'somewhere-else'" in why
    after = backend.store.get("j1")
    assert before is not None and after is not None
    assert after.status == JobStatus.RUNNING and after.version == before.version
    assert drain(backend, p, "finish") == [Outcome.COMMITTED]


def test_a_permanent_error_fails_the_job_once_without_retry(backend: Backend) -> None:
    calls: dict[str, int] = {}
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={"x": "permanent"}, queue="numbers")
    assert drain(backend, p, "double") == [Outcome.FAILED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.FAILED and job.history[-1].reason == "x must be a number"
    assert calls == {"j1": 1}
    assert backend.transport.depth("numbers").total == 0 and backend.transport.depth("doubled").total == 0


def test_a_raising_handler_is_retried_with_backoff_then_dead_lettered(backend: Backend) -> None:
    calls: dict[str, int] = {}
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="bad", payload={"x": "boom"}, queue="numbers")
    p.submit(backend, job_id="fine", payload={"x": 2}, queue="numbers")
    outcomes = drain(backend, p, "double")
    assert outcomes.count(Outcome.RETRIED) == 2 and outcomes.count(Outcome.DEAD_LETTERED) == 1
    assert calls["bad"] == 3  # max_receives
    job = backend.store.get("bad")
    assert job is not None and job.status == JobStatus.FAILED
    assert "RuntimeError: handler exploded (attempt 3 of 3)" in (job.history[-1].reason or "")
    [(body, why)] = dead_letters(backend, "numbers-dlq")
    assert json.loads(body)["job_id"] == "bad" and "handler exploded" in why
    fine = backend.store.get("fine")
    assert fine is not None and fine.status == JobStatus.RUNNING


def test_backoff_grows_exponentially_and_is_capped() -> None:
    st = two_stage().get("double")
    assert [st.backoff_s(a) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


@pytest.mark.parametrize("point", ["after_receive", "after_begin", "after_handle", "after_commit", "after_emit", "after_ack"])
def test_a_crash_at_any_point_is_finished_by_the_next_delivery(backend: Backend, point: str) -> None:
    calls: dict[str, int] = {}
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={"x": 3}, queue="numbers")
    st = p.get("double")
    crashing = Controller(p, st, backend, faults=FaultPlan.of([Fault(point, stage="double")]))
    [d] = backend.transport.receive("numbers", max_messages=1, wait_s=0, visibility_s=30)
    with pytest.raises(SimulatedCrash):
        crashing.handle(d)
    # the process is gone; the message comes back after its visibility timeout
    drain(backend, p, "double")
    drain(backend, p, "finish")
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields["z"] == 7
    assert job.commits("double") == 1 and job.commits("finish") == 1
    if point in ("after_commit", "after_emit") and backend.transactional:
        assert calls["j1"] == 2  # the crash rolled the whole commit+emit+ack back
    elif point in ("after_commit", "after_emit", "after_ack"):
        assert calls["j1"] == 1  # committed once; the redelivery replayed the outbox
    elif point == "after_handle":
        assert calls["j1"] == 2  # the result was lost with the process
    else:
        assert calls["j1"] == 1  # the handler had not run yet


def test_a_stale_lease_can_neither_commit_nor_emit(backend: Backend) -> None:
    # Given a holder whose lease lapsed while its handler ran, and a second holder
    p = Pipeline("t")
    release = threading.Event()
    results: list[str] = []

    @p.stage("s", source="in", emit_to="out", visibility_timeout_s=10)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        results.append(ctx.delivery.receipt)
        return Result(status=JobStatus.COMPLETED, fields={"by": ctx.delivery.receipt}, emit=[{"n": 1}])

    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    ctrl = Controller(p, "s", backend)
    [old] = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=10)
    old_lease = ctrl.lease(old)
    old_steps = ctrl.process([(old, old_lease)])
    assert next(old_steps) == "after_receive"
    assert next(old_steps) == "after_begin"
    old_lease.pause()  # the old holder stalls
    assert isinstance(backend.clock, SimClock)
    backend.clock.advance(11)
    [new] = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=10)
    # When the new holder commits, and the old one wakes up and tries
    assert ctrl.handle(new) == Outcome.COMMITTED
    old_lease.pause(False)
    with pytest.raises(StopIteration) as done:
        while True:
            next(old_steps)
    # Then only the new holder's result exists, emitted once
    assert done.value.value in ([Outcome.DUPLICATE], [Outcome.DISCARDED])
    job = backend.store.get("j")
    assert job is not None and job.fields["by"] == new.receipt and job.commits("s") == 1
    assert backend.transport.depth("out").total == 1
    release.set()


def test_effect_keys_are_stable_across_redeliveries(backend: Backend) -> None:
    keys: dict[str, list[str]] = {"j": [], "k": []}
    p = Pipeline("t")

    @p.stage("s", source="in", max_receives=3, retry_base_s=0, retry_max_s=0)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        keys[msg.job_id].append(ctx.effect_key("email"))
        if len(keys[msg.job_id]) < 2:
            raise RuntimeError("transient")
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    p.submit(backend, job_id="k", payload={}, queue="in")
    drain(backend, p, "s")
    assert len(keys["j"]) == 2 and keys["j"][0] == keys["j"][1]
    assert keys["k"][0] != keys["j"][0]


def test_post_completion_stages_add_fields_without_changing_status(backend: Backend) -> None:
    p = Pipeline("t")
    p.stage("annotate", source="in", publish_to="results")(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED, emit=[{"k": "v"}]))
    p.stage("notify", source="notify_q", subscribe=("results",), raw_subscription=False)(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, fields={"emailed": True}))
    p.stage("archive", source="archive_q", subscribe=("results",))(
        lambda ctx, msg: Result(fields={"archived": msg.payload["k"]}))
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    for stage in ("annotate", "notify", "archive"):
        assert drain(backend, p, stage) == [Outcome.COMMITTED]
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields == {"emailed": True, "archived": "v"}


def test_plain_json_and_sns_wrapped_requests_are_accepted(backend: Backend) -> None:
    p = Pipeline("t")
    seen: list[dict[str, object]] = []
    p.stage("annotate", source="requests", plain_json=True, required_fields=("job_id", "user_id"))(
        lambda ctx, msg: seen.append(msg.payload) or Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    request = {"job_id": "g1", "user_id": "u", "input_file_name": "a.vcf"}
    wrapped = json.dumps({"Type": "Notification", "MessageId": "sns-1", "Message": json.dumps(request)})
    backend.transport.send("requests", Outgoing(body=wrapped))
    backend.transport.send("requests", Outgoing(body=wrapped, message_id="again"))  # SNS redelivers
    backend.transport.send("requests", Outgoing(body=json.dumps({"job_id": "g2"})))  # lacks user_id
    outcomes = drain(backend, p, "annotate")
    assert sorted(outcomes) == sorted([Outcome.COMMITTED, Outcome.DUPLICATE, Outcome.DEAD_LETTERED])
    assert seen == [request]
    g1 = backend.store.get("g1")
    assert g1 is not None and g1.status == JobStatus.COMPLETED and g1.user_id == "u"


def test_emit_can_target_other_queues_and_plain_bodies(backend: Backend) -> None:
    p = Pipeline("t")
    p.stage("s", source="in")(lambda ctx, msg: Result(emit=[Emit({"a": 1}, to="x"), Emit({"b": 2}, to="y", plain=True)]))
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    drain(backend, p, "s")
    [x] = backend.transport.peek("x", 10)
    [y] = backend.transport.peek("y", 10)
    assert Envelope.model_validate_json(x.body).payload == {"a": 1}
    assert json.loads(y.body) == {"job_id": "j", "b": 2}


def test_inconsistent_stage_settings_are_refused_at_start(backend: Backend) -> None:
    p = Pipeline("t")
    p.stage("s", source="in", time_limit_s=13 * 3600, retry_max_s=3600, visibility_timeout_s=0.5)(lambda c, m: Result())
    with pytest.raises(ConfigError) as err:
        Worker(p, "s", backend)
    text = str(err.value)
    assert "longer than the heartbeat can cover" in text
    assert "retry_max_s 3600" in text and "visibility_timeout_s 0.5s" in text


def test_resubmitting_a_job_is_idempotent(backend: Backend) -> None:
    p = two_stage()
    p.setup(backend)
    _, first = p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")
    _, second = p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")
    assert first and not second
    assert backend.transport.depth("numbers").total == 1
    drain(backend, p, "double")
    p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")  # after it was processed
    assert drain(backend, p, "double") == [Outcome.DUPLICATE]
    job = backend.store.get("j")
    assert job is not None and job.commits("double") == 1


def test_a_later_resubmission_sends_the_first_message_again_under_its_id(backend: Backend) -> None:
    # A first message's id says when it was submitted; a resubmission a minute later still
    # sends the message the job was first given, so the copy waiting in the queue takes it in.
    p = two_stage()
    p.setup(backend)
    job, _ = p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers", delay_s=30)
    clock = backend.clock
    assert isinstance(clock, SimClock) and job.origin is not None
    clock.advance(60)
    _, again = p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers", delay_s=30)
    assert not again
    [waiting] = backend.transport.peek("numbers", 10)
    assert (waiting.message_id, waiting.body) == (job.origin.id, job.origin.body)
    assert drain(backend, p, "double") == [Outcome.COMMITTED]


def test_resubmissions_to_a_job_another_writer_created_send_one_message(backend: Backend) -> None:
    # A job created without a first message (a web app writes its own row) is given one by a
    # submit; later submits send the same one, whatever the time, so one copy waits
    p = two_stage()
    p.setup(backend)
    backend.store.create("j", fields={"by": "web"})
    clock = backend.clock
    assert isinstance(clock, SimClock)
    for _ in range(3):
        _, created = p.submit(backend, job_id="j", payload={"x": 1}, queue="numbers")
        assert not created
        clock.advance(60)
    [waiting] = backend.transport.peek("numbers", 10)
    assert Envelope.model_validate_json(waiting.body).id == waiting.message_id


def test_heartbeat_on_the_system_clock_keeps_a_long_handler_leased(tmp_path: Path) -> None:
    # Given a 1 s visibility timeout and a handler that takes 2.5 s
    b = sqlite_backend(tmp_path / "hb.db")
    p = Pipeline("t")
    calls: list[int] = []

    @p.stage("slow", source="in", visibility_timeout_s=1.0, max_receives=3, wait_s=0.05)
    def slow(ctx, msg):  # type: ignore[no-untyped-def]
        calls.append(ctx.attempt)
        time.sleep(2.5)
        return Result(status=JobStatus.COMPLETED)

    p.setup(b)
    p.submit(b, job_id="j", payload={}, queue="in")
    # When two workers compete for the queue
    w1, w2 = Worker(p, "slow", b, wait_s=0.05), Worker(p, "slow", b, wait_s=0.05)
    w1.start()
    w2.start()
    deadline = time.time() + 10
    while time.time() < deadline and not (b.store.get("j") or None).status.terminal:  # type: ignore[union-attr]
        time.sleep(0.1)
    w1.stop()
    w2.stop()
    # Then the message was never handed to the second worker
    assert calls == [1]
    job = b.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED


def test_stop_releases_prefetched_messages_at_once(tmp_path: Path) -> None:
    b = sqlite_backend(tmp_path / "stop.db")
    p = Pipeline("t")
    started = threading.Event()
    proceed = threading.Event()

    @p.stage("s", source="in", visibility_timeout_s=300, batch_size=5, wait_s=0.05)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        started.set()
        proceed.wait(5)
        return Result(status=JobStatus.COMPLETED)

    p.setup(b)
    for i in range(5):
        p.submit(b, job_id=f"j{i}", payload={}, queue="in")
    w = Worker(p, "s", b)
    w.start()
    assert started.wait(5)
    w.request_stop()
    proceed.set()
    w.stop(drain=True, timeout=10)
    # one message finished, the other four are visible again at once (not after 300 s)
    depth = b.transport.depth("in")
    assert (depth.visible, depth.in_flight) == (4, 0)
    assert len(b.store.query(status=JobStatus.COMPLETED)) == 1


def test_a_body_that_only_outgrows_the_limit_once_sns_wrapped_fails_before_the_commit(backend: Backend) -> None:
    # Given a stage publishing to a topic with a wrapped (non-raw) subscriber, and a payload whose
    # envelope fits a queue but whose SNS notification (quotes escaped, metadata added) does not
    p = Pipeline("t")
    limit = backend.transport.max_body_bytes
    p.stage("make", source="in", publish_to="news")(
        lambda ctx, msg: Result(status=JobStatus.RUNNING, emit=[{"q": '"' * ((limit - 400) // 2)}]))
    p.stage("read", source="inbox", subscribe=("news",), raw_subscription=False)(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    # When the stage runs
    outcomes = drain(backend, p, "make")
    # Then the step fails once, with the reason, before anything is committed or published
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.FAILED, outcomes
    assert outcomes == [Outcome.FAILED]
    assert "as an SNS notification), over the queue's" in (job.history[-1].reason or "")
    assert job.steps["make"].state == "failed" and not job.steps["make"].outbox
    assert backend.transport.depth("inbox").total == 0 and backend.transport.depth("in").total == 0
