"""Producers: create a job and enqueue its first message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.backends import Backend
from orchestrator.base import Outgoing
from orchestrator.envelope import Envelope, submit_id
from orchestrator.errors import ConfigError
from orchestrator.status import JobRecord, OutMessage


def submit(
    backend: Backend,
    *,
    job_id: str,
    payload: dict[str, Any],
    queue: str | None = None,
    topic: str | None = None,
    user_id: str | None = None,
    task: str | None = None,
    fields: dict[str, Any] | None = None,
) -> tuple[JobRecord, bool]:
    """Create the job PENDING and send its first message; returns (job, created).

    Idempotent: the message id derives from the job id and target, so resubmitting adds no
    second job and the consumer treats a second copy as a duplicate. On the embedded backend
    both writes are one transaction; elsewhere a crash between them leaves a PENDING job
    that resubmitting (or the sweeper) completes.
    """
    if (queue is None) == (topic is None):
        raise ConfigError("submit needs exactly one of queue= or topic=")
    target = queue or topic
    assert target is not None
    env = Envelope(id=submit_id(job_id, target), task=task or target, job_id=job_id,
                   payload=payload, created_at=backend.clock.now())
    env = env.model_copy(update={"trace_id": env.id})

    origin = OutMessage(kind="queue" if queue is not None else "topic", target=target, id=env.id, body=env.to_json())

    def unit() -> tuple[JobRecord, bool]:
        rec, created = backend.store.create(job_id, user_id=user_id, fields=fields, origin=origin)
        if queue is not None:
            backend.transport.send(queue, Outgoing(body=env.to_json(), message_id=env.id, group_id=job_id))
        else:
            assert topic is not None
            backend.topic.publish(topic, env.to_json(), message_id=env.id, group_id=job_id)
        return rec, created

    return backend.run_atomic(unit)


def submit_many(
    backend: Backend,
    jobs: Sequence[tuple[str, dict[str, Any]]],
    *,
    queue: str | None = None,
    topic: str | None = None,
    user_id: str | None = None,
) -> int:
    """``submit`` for many (job id, payload) pairs; returns how many jobs were new. On the
    embedded backend all of them are one transaction (all or none): bulk loads and
    benchmarks do not pay a transaction per job."""

    def unit() -> int:
        return sum(submit(backend, job_id=job_id, payload=payload, queue=queue, topic=topic, user_id=user_id)[1]
                   for job_id, payload in jobs)

    return backend.run_atomic(unit)
