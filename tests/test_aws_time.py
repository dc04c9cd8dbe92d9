"""Snoozes, delays and priorities through SQS, SNS and DynamoDB on moto, on a clock the test
moves (moto's own, which also times SQS's delays and visibility): nothing waits for real."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator

import moto.core.utils
import pytest
from moto import mock_aws

from orchestrator import Controller, JobStatus, Pipeline, Result, Snooze
from orchestrator.backends import Backend
from orchestrator.backends.aws import aws_backend
from orchestrator.clock import SystemClock
from orchestrator.controllers.controller import Outcome


class MotoClock(SystemClock):
    """moto's clock (which the test moves) as ours; timers (heartbeats) run on real time."""

    def now(self) -> float:
        return moto.core.utils.utcnow().replace(tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Backend, Callable[[float], None]]]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    offset = [0.0]
    real = moto.core.utils.utcnow
    monkeypatch.setattr(moto.core.utils, "utcnow", lambda: real() + datetime.timedelta(seconds=offset[0]))

    def advance(seconds: float) -> None:
        offset[0] += seconds

    with mock_aws():
        yield aws_backend("aws://?region=us-east-1&prefix=tt-", clock=MotoClock()), advance  # type: ignore[arg-type]


def take(backend: Backend, p: Pipeline, stage: str) -> list[Outcome]:
    st = p.get(stage)
    got = backend.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=st.visibility_timeout_s)
    return Controller(p, st, backend, seed=1).handle_batch(got) if got else []


def test_a_restore_that_takes_hours_snoozes_through_sqs_without_using_attempts(
        aws: tuple[Backend, Callable[[float], None]]) -> None:
    backend, advance = aws
    ready_at = backend.clock.now() + 3 * 3600
    p = Pipeline("glacier")

    @p.stage("restore", source="restores", max_receives=2, wait_s=0, max_snooze_s=48 * 3600)
    def restore(ctx, msg):  # type: ignore[no-untyped-def]
        if ctx.clock.now() < ready_at:
            return Snooze(3600, reason="Glacier restore in progress")  # past SQS's 15-minute delay cap
        return Result(status=JobStatus.COMPLETED, fields={"attempt": ctx.attempt})

    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="restores")
    outcomes: list[Outcome] = []
    for _ in range(3):
        outcomes += take(backend, p, "restore")
        # every 10 minutes of the hour: nothing handed to the controller (chained hops pass unseen)
        for _ in range(5):
            advance(600)
            assert take(backend, p, "restore") == []
        advance(600 + 1)
    outcomes += take(backend, p, "restore")
    assert outcomes == [Outcome.SNOOZED] * 3 + [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields["attempt"] == 1
    assert [h.event for h in job.history].count("snoozed") == 3


def test_a_job_delayed_past_fifteen_minutes_is_received_at_its_time(
        aws: tuple[Backend, Callable[[float], None]]) -> None:
    backend, advance = aws
    p = Pipeline("later")
    p.stage("run", source="runs", wait_s=0)(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    rec, _ = p.submit(backend, job_id="j1", payload={}, queue="runs", delay_s=2 * 3600)
    assert rec.status == JobStatus.PENDING and rec.due_at == pytest.approx(backend.clock.now() + 7200, abs=2)
    for _ in range(11):
        advance(600)
        assert take(backend, p, "run") == []
    advance(600 + 2)
    assert take(backend, p, "run") == [Outcome.COMMITTED]


def test_priorities_travel_through_sns_into_the_bands_and_high_ones_are_received_first(
        aws: tuple[Backend, Callable[[float], None]]) -> None:
    backend, _ = aws
    p = Pipeline("bands")
    order: list[str] = []

    @p.stage("work", source="work", subscribe=("jobs",), raw_subscription=False, priority_bands=(5, 9), wait_s=0)
    def work(ctx, msg):  # type: ignore[no-untyped-def]
        order.append(msg.job_id)
        return Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    for job, prio in [("low-1", 0), ("mid", 6), ("top", 9), ("low-2", 2)]:
        p.submit(backend, job_id=job, payload={}, topic="jobs", priority=prio)
    assert sorted(q for q in backend.transport.queues() if q.startswith("work")) == \
        ["work", "work-dlq", "work-p5", "work-p9"]
    while take(backend, p, "work"):
        pass
    assert order[:2] == ["top", "mid"] and sorted(order[2:]) == ["low-1", "low-2"]
    assert all(backend.store.get(j).status == JobStatus.COMPLETED for j in order)  # type: ignore[union-attr]
    # a message without a priority (a producer of its own publishing to the topic) lands in the queue itself
    backend.topic.publish("jobs", json.dumps({"v": 1}), message_id="foreign")
    landed = {q: len(backend.transport.peek(q, 10)) for q in ("work", "work-p5", "work-p9")}
    assert landed == {"work": 1, "work-p5": 0, "work-p9": 0}
