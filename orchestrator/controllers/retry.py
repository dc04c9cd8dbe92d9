"""Retry of a FAILED job: its failed stage gets its input again, and the job goes back to PENDING.

The input comes from the failed step's record (a stage that begins keeps its input up to 16
KiB), else from the job's first message (when the failed stage is the one it was sent to),
else from the stage's dead-letter queue (the copy found there is deleted once the retry is
sent). The retry's write and its send are one transaction on SQLite and PostgreSQL; elsewhere a
crash between them leaves the job PENDING with a step holding its input, which the sweeper
re-sends.
"""

from __future__ import annotations

from orchestrator import jobdoc
from orchestrator.backends import Backend
from orchestrator.base import Delivery, Outgoing, default_dead_letter
from orchestrator.codec import Codec
from orchestrator.envelope import derive_id
from orchestrator.errors import InvalidTransition, JobNotFound, MalformedMessage, RetryImpossible
from orchestrator.jobdoc import FAILED, Doc
from orchestrator.pipeline import Pipeline, Stage
from orchestrator.status import JobRecord

#: how many dead letters a retry looks through for the job's input
MAX_DLQ_SCAN = 1000
DLQ_LEASE_S = 120.0


def retry(pipeline: Pipeline | None, backend: Backend, job_id: str, *, by: str | None = None,
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
    stage = pipeline.stages.get(name) if pipeline is not None else None
    body, source, held = _input(backend, doc, failed, stage)
    if body is None or source is None:
        where = stage.dead_letter_queue if stage is not None else "its dead-letter queue"
        raise RetryImpossible(f"job {job_id}: the input of stage {name} was not kept, and is not in {where}")
    n = sum(1 for h in doc["history"] if h["event"] == "retry") + 1
    message_id = derive_id("retry", job_id, name, str(n))
    why = f"retried by {by or 'an operator'}" + (f": {reason}" if reason else "")

    def unit() -> JobRecord:
        rec = backend.store.retry(job_id, stage=name, message_id=message_id, input_body=body, source=source,
                                  reason=why)
        backend.transport.send(source, Outgoing(body=body, message_id=message_id, group_id=job_id))
        return rec

    rec = backend.run_atomic(unit)
    if held is not None:
        backend.transport.ack(held)  # the dead letter was sent again: it is no longer dead
    return rec


def _input(backend: Backend, doc: Doc, failed: str, stage: Stage | None
           ) -> tuple[str | None, str | None, Delivery | None]:
    """(body, queue, the dead letter it came from if it did)."""
    step = doc["steps"].get(failed) or {}
    source = step.get("source") or (stage.source if stage is not None else None)
    if step.get("input") is not None and source:
        return step["input"], source, None
    origin = doc.get("origin")
    if origin is not None and stage is not None and (
            (origin["kind"] == "queue" and origin["target"] == stage.source)
            or (origin["kind"] == "topic" and origin["target"] in stage.subscribe)):
        return origin["body"], stage.source, None
    if source is None:
        return None, None, None
    dlq = stage.dead_letter_queue if stage is not None else default_dead_letter(source)
    held = _take_dead_letter(backend, dlq, doc["job_id"], stage.codec if stage is not None else Codec())
    return (held.body, source, held) if held is not None else (None, source, None)


def _take_dead_letter(backend: Backend, dlq: str, job_id: str, codec: Codec) -> Delivery | None:
    """Lease the job's message in ``dlq`` (others are handed back at once), or None."""
    t = backend.transport
    seen: set[str] = set()
    while len(seen) < MAX_DLQ_SCAN:
        batch = t.receive(dlq, max_messages=t.max_batch, wait_s=0, visibility_s=DLQ_LEASE_S)
        fresh = [d for d in batch if d.message_id not in seen]
        found = None
        for d in batch:
            seen.add(d.message_id)
            try:
                jid: str | None = codec.decode(d.body).job_id
            except MalformedMessage as exc:
                jid = exc.job_id
            if found is None and jid == job_id:
                found = d
            else:
                t.release(d, 0)
        if found is not None or not fresh:
            return found
    return None
