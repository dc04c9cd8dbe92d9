"""Retry of a FAILED job: its failed stage gets its input again, and the job goes back to PENDING.

The input comes from the failed step's record (a stage that begins keeps its input up to 16
KiB), else from the job's first message (when the failed stage is the one it was sent to),
else from the stage's dead-letter queue (the copy found there is deleted once the retry is
sent). The retry's write and its send are one transaction on SQLite and PostgreSQL; elsewhere a
crash between them leaves the job PENDING with a step holding its input, which the sweeper
re-sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from orchestrator import jobdoc
from orchestrator.backends import Backend
from orchestrator.base import Delivery, Outgoing, default_dead_letter
from orchestrator.codec import Codec
from orchestrator.envelope import Envelope, derive_id
from orchestrator.errors import InvalidTransition, JobNotFound, MalformedMessage, RetryImpossible
from orchestrator.jobdoc import FAILED, Doc
from orchestrator.stage import Stage
from orchestrator.status import JobRecord


class HasStages(Protocol):
    """What a retry needs of a pipeline: its stages, to find a failed one's dead-letter queue."""

    @property
    def stages(self) -> Mapping[str, Stage]: ...

#: how many dead letters a retry looks through for the job's input
MAX_DLQ_SCAN = 1000
DLQ_LEASE_S = 120.0


def retry(pipeline: HasStages | None, backend: Backend, job_id: str, *, by: str | None = None,
          reason: str | None = None) -> JobRecord:
    doc = backend.store.get_docs([job_id]).get(job_id)
    if doc is None:
        raise JobNotFound(f"no job {job_id!r}")
    if doc["status"] != FAILED:
        raise InvalidTransition(f"job {job_id} is {doc['status']}; only a FAILED job can be retried", current=doc)
    failed = jobdoc.failed_stage(doc)
    if failed is None:
        raise RetryImpossible(f"job {job_id} is FAILED but its history names no failed stage")
    name = failed.split("!")[0]  # a rejected copy ("stage!rejected") is the stage's
    stage_name, _, part = name.partition("#")  # a part's step is "stage#i"
    stage = pipeline.stages.get(stage_name) if pipeline is not None else None
    body, source, held = _input(backend, doc, failed, stage, int(part) if part.isdigit() else None)
    if body is None or source is None:
        where = stage.dead_letter_queue if stage is not None else "its dead-letter queue"
        raise RetryImpossible(f"job {job_id}: the input of stage {name} was not kept, and is not in {where}")
    n = sum(1 for h in doc["history"] if h["event"] == "retry") + 1
    message_id = derive_id("retry", job_id, name, str(n))
    why = f"retried by {by or 'an operator'}" + (f": {reason}" if reason else "")

    # A failed part made the job FAILED, and its sibling parts still queued were then dropped
    # unrun: they go out again too, from the outbox that sent them (same ids), or the join
    # would wait for them for ever.
    siblings = _unfinished_parts(doc, stage_name, source, skip=name) if part else []

    with backend.unit():
        rec = backend.store.retry(job_id, stage=name, message_id=message_id, input_body=body, source=source,
                                  reason=why)
        backend.transport.send_batch(source, [Outgoing(body=body, message_id=message_id, group_id=job_id),
                                              *(Outgoing(body=b, message_id=m, group_id=job_id) for m, b in siblings)])
    if held is not None:
        backend.transport.ack(held)  # the dead letter was sent again: it is no longer dead
    return rec


def _input(backend: Backend, doc: Doc, failed: str, stage: Stage | None, part: int | None
           ) -> tuple[str | None, str | None, Delivery | None]:
    """(body, queue, the dead letter it came from if it did)."""
    step = doc["steps"].get(failed) or {}
    source = step.get("source") or (stage.source if stage is not None else None)
    if step.get("input") is not None and source:
        return step["input"], source, None
    origin = doc.get("origin")
    if origin is not None and stage is not None and part is None and (
            (origin["kind"] == "queue" and origin["target"] == stage.source)
            or (origin["kind"] == "topic" and origin["target"] in stage.subscribe)):
        return origin["body"], stage.source, None
    if source is None:
        return None, None, None
    dlq = stage.dead_letter_queue if stage is not None else default_dead_letter(source)
    held = _take_dead_letter(backend, dlq, doc["job_id"], part, stage.codec if stage is not None else Codec())
    return (held.body, source, held) if held is not None else (None, source, None)


def _unfinished_parts(doc: Doc, stage: str, source: str, *, skip: str) -> list[tuple[str, str]]:
    """(message id, body) of every part of ``stage`` sent to ``source`` by a committed step
    whose own step (``stage#i``) is not committed, but ``skip``'s."""
    out = []
    for step in doc["steps"].values():
        if step["state"] != "committed":
            continue
        for m in step["outbox"]:
            if m["kind"] != "queue" or m["target"] != source:
                continue
            try:
                env = Envelope.model_validate_json(m["body"])
            except ValueError:
                continue
            key = f"{stage}#{env.part}"
            if env.part is not None and key != skip and doc["steps"].get(key, {}).get("state") != "committed":
                out.append((m["id"], m["body"]))
    return out


def _take_dead_letter(backend: Backend, dlq: str, job_id: str, part: int | None, codec: Codec) -> Delivery | None:
    """Lease the job's message (its ``part``'s, for a part) in ``dlq`` (others are handed back
    at once), or None."""
    t = backend.transport
    seen: set[str] = set()
    while len(seen) < MAX_DLQ_SCAN:
        batch = t.receive(dlq, max_messages=t.max_batch, wait_s=0, visibility_s=DLQ_LEASE_S)
        fresh = [d for d in batch if d.message_id not in seen]
        found = None
        for d in batch:
            seen.add(d.message_id)
            jid: str | None
            its_part: int | None
            try:
                env = codec.decode(d.body)
                jid, its_part = env.job_id, env.part
            except MalformedMessage as exc:
                jid, its_part = exc.job_id, None
            if found is None and jid == job_id and its_part == part:
                found = d
            else:
                t.release(d, 0)
        if found is not None or not fresh:
            return found
    return None
