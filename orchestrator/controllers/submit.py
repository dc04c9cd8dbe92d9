"""Producers: create a job and enqueue its first message."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from orchestrator import jobdoc
from orchestrator.backends import Backend
from orchestrator.base import MAX_PRIORITY, Outgoing
from orchestrator.envelope import Envelope, legacy_submit_id, submit_id
from orchestrator.errors import ConfigError, DuplicateJob, InvalidPayload, InvalidSubmission
from orchestrator.jobdoc import Doc, to_record
from orchestrator.kinds import seconds, whole
from orchestrator.status import JobRecord, NewJob, OutMessage
from orchestrator.storable import fields_problem, id_problem, value_problem

#: how far in the past ``at=`` may be (a clock a little behind, a request that queued) before
#: it is refused as a mistake; within it the job runs at once
AT_GRACE_S = 60.0
#: how many jobs ``submit_many`` writes per statement (SQL parameter limits, SQS and SNS batches split further)
BULK_CHUNK = 500


def check_timing(*, delay_s: float = 0.0, priority: int | None = 0) -> None:
    """Raise ``InvalidSubmission`` for a delay or priority no backend can honour."""
    if not seconds(delay_s):
        raise InvalidSubmission(f"delay must be a finite number of seconds >= 0, got {delay_s!r}")
    if priority is not None and not whole(priority, 0, MAX_PRIORITY):
        raise InvalidSubmission(f"priority must be an integer 0..{MAX_PRIORITY}, got {priority!r}")


def due_time(now: float, *, delay_s: float = 0.0, at: float | datetime | None = None) -> float | None:
    """When a submission comes due (None: at once), from a delay or an absolute time (epoch
    seconds, or a datetime with its time zone). Raises ``InvalidSubmission``."""
    if at is not None and delay_s:
        raise InvalidSubmission("give a delay or a time (at=), not both")
    if at is None:
        check_timing(delay_s=delay_s)
        return now + delay_s if delay_s else None
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise InvalidSubmission(f"at={at.isoformat()} has no time zone (say Z or +01:00)")
        ts = at.timestamp()
    elif isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        ts = float(at)
    else:
        raise InvalidSubmission(f"at must be a datetime or epoch seconds, got {at!r}")
    if ts < now - AT_GRACE_S:
        raise InvalidSubmission(f"at is {now - ts:.0f}s in the past (more than the {AT_GRACE_S:.0f}s grace)")
    return ts if ts > now else None


@dataclass(frozen=True)
class _Request:
    """One submission, checked and encoded (no I/O yet)."""

    job: NewJob
    payload: dict[str, Any]
    first: Outgoing
    envelope: Envelope  # the first message's


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
    delay_s: float = 0.0,
    at: float | datetime | None = None,
    priority: int = 0,
) -> tuple[JobRecord, bool]:
    """Create the job PENDING and send its first message; returns (job, created).

    ``delay_s`` or ``at`` (epoch seconds or an aware datetime) hold the first message until
    then, any length of time; the job shows PENDING with its ``due_at`` meanwhile.
    ``priority`` (0..9) orders it among the queue's ready messages.

    Idempotent: resubmitting adds no second job, and sends the job's first message again,
    under its first id, so the consumer treats a second copy as a duplicate. On the embedded backend
    both writes are one transaction; elsewhere a crash between them leaves a PENDING job
    that resubmitting (or the sweeper) completes.
    """
    req = _request(backend, job_id, payload, queue=queue, topic=topic, user_id=user_id, task=task, fields=fields,
                   due=due_time(backend.clock.now(), delay_s=delay_s, at=at), priority=priority)
    [(doc, created)] = _write(backend, [req], queue=queue, topic=topic)
    return to_record(doc), created


def _request(backend: Backend, job_id: str, payload: dict[str, Any], *, queue: str | None, topic: str | None,
             user_id: str | None, task: str | None, fields: dict[str, Any] | None, due: float | None,
             priority: int) -> _Request:
    if (queue is None) == (topic is None):
        raise ConfigError("submit needs exactly one of queue= or topic=")
    target = queue or topic
    assert target is not None
    check_submission(job_id, payload, user_id=user_id, fields=fields, priority=priority, task=task)
    now = backend.clock.now()
    mid = submit_id(job_id, target, now)  # a job's trace is its first message's id
    env = Envelope(id=mid, task=task or target, job_id=job_id, payload=payload, created_at=now, trace_id=mid)
    body = travelling_body(env)
    origin = OutMessage(kind="queue" if queue is not None else "topic", target=target, id=env.id, body=body,
                        due_at=due, priority=priority)
    first = Outgoing(body=body, message_id=env.id, group_id=job_id, priority=priority,
                     delay_s=max(0.0, due - now) if due is not None else 0.0)
    return _Request(NewJob(job_id, user_id, fields, origin), payload, first, env)


def _write(backend: Backend, requests: Sequence[_Request], *, queue: str | None, topic: str | None
           ) -> list[tuple[Doc, bool]]:
    """Create the jobs and send their first messages, in one unit of work: one statement for
    the jobs and one for the messages on SQLite and PostgreSQL, however many there are."""
    with backend.unit():
        # A resubmission that is not the same request is refused before anything is written.
        # In a transaction that is the check below, after the writes, against what each copy
        # found (the job stored before, or the first copy of its id in this call): the
        # refusal undoes the writes. Elsewhere the jobs are read and checked first, and a
        # second copy of a new id is checked against the first.
        if not backend.transactional:
            before = backend.store.get_docs([r.job.job_id for r in requests])
            firsts: dict[str, _Request] = {}
            for r in requests:
                known = before.get(r.job.job_id)
                if known is not None:
                    _check_same(known, r)
                elif (first := firsts.setdefault(r.job.job_id, r)) is not r:
                    _check_same(jobdoc.new_doc(first.job.job_id, user_id=first.job.user_id, fields={}, now=0.0,
                                               origin=first.job.origin), r)
        made = backend.store.create_docs([r.job for r in requests])
        outs = []
        for r, (doc, created) in zip(requests, made, strict=True):
            if not created:
                _check_same(doc, r)  # (created meanwhile by another submitter)
            outs.append(r.first if created else _again(backend, doc, r))
        if queue is not None:
            backend.transport.send_batch(queue, outs)
        else:
            assert topic is not None
            backend.topic.publish_batch(topic, outs)
    return made


def _again(backend: Backend, doc: Doc, r: _Request) -> Outgoing:
    """What a resubmission sends: the job's first message again, under its id and at its
    time, not a new delay from now (the same message, so a copy still waiting takes it in).
    A job that keeps no first message (created by another writer) gets the id its first
    message had before ids had a time."""
    origin = doc.get("origin")
    if origin is None:
        assert r.job.origin is not None
        mid = legacy_submit_id(doc["job_id"], r.job.origin.target)
        return replace(r.first, body=travelling_body(r.envelope.model_copy(update={"id": mid, "trace_id": mid})),
                       message_id=mid)
    due = origin.get("due_at")
    delay = max(0.0, due - backend.clock.now()) if due is not None else 0.0
    return replace(r.first, body=origin["body"], message_id=origin["id"], delay_s=delay)


def _check_same(doc: Doc, r: _Request) -> None:
    assert r.job.origin is not None
    check_same_request(to_record(doc), payload=r.payload, user_id=r.job.user_id, origin=r.job.origin)


def check_submission(job_id: str, payload: dict[str, Any], *, user_id: str | None,
                     fields: dict[str, Any] | None, priority: int, task: str | None = None) -> None:
    """Refuse, with the reason, what no store could keep or no consumer could read."""
    if priority is None:  # (an Emit's None is its stage's priority; a submit has no stage)
        raise InvalidSubmission(f"priority must be an integer 0..{MAX_PRIORITY}, got None")
    check_timing(priority=priority)
    problem = (id_problem(job_id) or id_problem(user_id, "user id", optional=True)
               or id_problem(task or None, "task", optional=True))  # (no task: the target's)
    if problem is not None:
        raise InvalidSubmission(problem)
    if not isinstance(payload, dict):  # (the envelope's payload is a JSON object)
        raise InvalidPayload(f"job {job_id!r}: payload must be a JSON object (a dict), got {type(payload).__name__}")
    problem = value_problem(payload, "payload") or (fields_problem(fields) if fields is not None else None)
    if problem is not None:
        raise InvalidPayload(f"job {job_id!r}: {problem}")


def travelling_body(env: Envelope) -> str:
    """The envelope as JSON. What a consumer could not read back (an integer of more than
    4,300 digits decodes to a ValueError in Python, a lone surrogate cannot be UTF-8) was
    refused by ``check_submission`` before this (``storable``: integers within 64 bits, text
    that encodes), so the body is not parsed again to prove it: that parse was a tenth of a
    submit."""
    try:
        return env.to_json()
    except ValueError as exc:
        raise InvalidPayload(f"job {env.job_id!r}: the payload cannot travel as JSON: {exc}") from exc


def check_same_request(rec: JobRecord, *, payload: dict[str, Any], user_id: str | None, origin: OutMessage) -> None:
    """A resubmission must be the same request (a retry after a crash or a timeout). Anything
    else would be dropped without a word: say so instead."""
    differs = []
    if user_id is not None and rec.user_id != user_id:
        differs.append(f"user {rec.user_id!r} (not {user_id!r})")
    if rec.origin is not None:
        if (rec.origin.kind, rec.origin.target) != (origin.kind, origin.target):
            differs.append(f"{rec.origin.kind} {rec.origin.target!r} (not {origin.kind} {origin.target!r})")
        try:
            before = json.loads(rec.origin.body).get("payload")
        except (ValueError, AttributeError):
            before = None
        if before is not None and before != json.loads(json.dumps(payload)):
            differs.append("a different payload")
    if differs:
        raise DuplicateJob(f"job {rec.job_id!r} was already submitted with {', '.join(differs)}; "
                           "a resubmission must repeat the request (use a new job id for a new one)")


def _item(i: int, item: object) -> tuple[Any, Any, Any]:
    """(job id, payload, user id or None) of ``submit_many``'s item ``i``, or InvalidSubmission."""
    if isinstance(item, tuple | list) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None
    raise InvalidSubmission(f"jobs[{i}]: an item is (job id, payload) or (job id, payload, user id), got "
                            f"{type(item).__name__} {str(item)[:80]!r}")


def submit_many(
    backend: Backend,
    jobs: Sequence[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str | None]],
    *,
    queue: str | None = None,
    topic: str | None = None,
    user_id: str | None = None,
    delay_s: float = 0.0,
    at: float | datetime | None = None,
    priority: int = 0,
) -> int:
    """``submit`` for many (job id, payload[, user id]) items at once; returns how many jobs
    were new. Every item is checked before anything is written (a bad one refuses the whole
    call with its reason); then the jobs and their first messages are written as ``submit``
    writes one, in units of ``BULK_CHUNK`` (on SQLite and PostgreSQL: a few statements each,
    all or none per unit). Idempotent as ``submit`` is: a resubmitted job adds nothing."""
    if isinstance(jobs, str | bytes | Mapping) or not isinstance(jobs, Iterable):
        raise InvalidSubmission(f"jobs must be a list of (job id, payload[, user id]), got {type(jobs).__name__}")
    due = due_time(backend.clock.now(), delay_s=delay_s, at=at)
    requests = [_request(backend, job_id, payload, queue=queue, topic=topic, user_id=user or user_id,
                         task=None, fields=None, due=due, priority=priority)
                for job_id, payload, user in map(_item, itertools.count(), jobs)]
    created = 0
    with backend.unit():  # on SQLite and PostgreSQL: all of them or none
        for start in range(0, len(requests), BULK_CHUNK):
            made = _write(backend, requests[start:start + BULK_CHUNK], queue=queue, topic=topic)
            created += sum(was_new for _, was_new in made)
    return created
