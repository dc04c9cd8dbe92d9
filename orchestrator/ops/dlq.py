"""Dead-letter queues: list, show, redrive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.backends import Backend
from orchestrator.base import Outgoing, is_default_dead_letter, source_of_dead_letter
from orchestrator.codec import Codec
from orchestrator.errors import InvalidArgument, MalformedMessage, NotADeadLetterQueue
from orchestrator.kinds import whole
from orchestrator.pipeline import Pipeline, Stage
from orchestrator.status import JobStatus
from orchestrator.transports.common import DEAD_LETTER_REASON

REDRIVE_VISIBILITY_S = 60.0
MAX_LIMIT = 2**63 - 1


def dead_letter_queues(backend: Backend, pipeline: Pipeline | None = None) -> list[str]:
    names = {q for q in backend.transport.queues() if is_default_dead_letter(q)}
    if pipeline is not None:
        names |= {st.dead_letter_queue for st in pipeline.stages.values()}
    return sorted(names)


def summary(backend: Backend, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    rows = []
    for q in dead_letter_queues(backend, pipeline):
        depth = backend.transport.depth(q)
        rows.append({"queue": q, "messages": depth.total})
    return rows


def show(backend: Backend, queue: str, *, limit: int = 20, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """The dead letters of ``queue``, each with its reason and, where its job keeps one, the
    exception its last attempt raised (``error``: type, message, traceback)."""
    limit = min(_count(limit), MAX_LIMIT)  # (the databases' LIMIT takes 64 bits)
    out = []
    for d in backend.transport.peek(queue, limit):
        source = d.attributes.get("source_queue", source_of_dead_letter(queue))
        out.append({"message_id": d.message_id, "reason": d.attributes.get(DEAD_LETTER_REASON, ""),
                    "source_queue": source, "body": d.body, "error": _last_error(backend, d.body, source, pipeline)})
    return out


def _last_error(backend: Backend, body: str, source: str, pipeline: Pipeline | None) -> dict[str, Any] | None:
    stage = _stage_for(pipeline, source) if pipeline is not None else None
    codec = stage.codec if stage is not None else Codec()
    try:
        env = codec.decode(body)
    except MalformedMessage:
        return None
    job = backend.store.get(env.job_id)
    if job is None:
        return None
    steps = [s for s in job.steps.values() if s.error is not None and s.message_id == env.id]
    return steps[-1].error.model_dump() if steps and steps[-1].error is not None else None


@dataclass
class RedriveResult:
    redriven: list[str]
    refused: list[str]  # (message id: why)


def _stage_for(pipeline: Pipeline, source: str) -> Stage | None:
    return next((st for st in pipeline.stages.values() if st.source == source), None)


def check_dead_letter_queue(backend: Backend, pipeline: Pipeline | None, queue: str) -> None:
    """Raise ``NotADeadLetterQueue`` unless ``queue`` is a dead-letter queue (never a queue a
    stage consumes: redriving it would take live messages out of their workers' hands)."""
    sources = {st.source for st in pipeline.stages.values()} if pipeline is not None else set()
    known = [q for q in dead_letter_queues(backend, pipeline) if q not in sources]
    if queue not in known:
        exists = queue in backend.transport.queues() or queue in sources
        raise NotADeadLetterQueue(f"{queue!r} is {'not a dead-letter queue' if exists else 'no queue'}; "
                                  f"dead-letter queues: {', '.join(known) or 'none'}")


def redrive(backend: Backend, pipeline: Pipeline, queue: str, *, limit: int = 100) -> RedriveResult:
    """Send dead letters back to their source queue. A FAILED job goes back to PENDING with
    a history entry; a COMPLETED job's dead letter is redriven only for a stage whose step
    failed after the job completed (its status stays COMPLETED); a PENDING or RUNNING job is
    left as it is (never moved backwards: a copy that is no longer needed is settled as a
    duplicate); a CANCELLED job's is refused. Refused ones stay dead-lettered. Raises
    ``NotADeadLetterQueue`` for any other queue."""
    limit = _count(limit)
    check_dead_letter_queue(backend, pipeline, queue)
    store, transport = backend.store, backend.transport
    done = RedriveResult([], [])
    seen: set[str] = set()
    while len(done.redriven) + len(done.refused) < limit:
        batch = transport.receive(queue, max_messages=min(10, limit), wait_s=0, visibility_s=REDRIVE_VISIBILITY_S)
        fresh = [d for d in batch if d.message_id not in seen]
        if not fresh:
            for d in batch:
                transport.release(d, 0)
            break
        for d in fresh:
            seen.add(d.message_id)
            source = d.attributes.get("source_queue") or source_of_dead_letter(queue)
            stage = _stage_for(pipeline, source)
            job_id = None
            if stage is not None:
                try:
                    job_id = stage.codec.decode(d.body).job_id
                except MalformedMessage as exc:
                    job_id = exc.job_id
            job = store.get(job_id) if job_id else None
            step = job.steps.get(stage.name) if job is not None and stage is not None else None
            if job is not None and job.status == JobStatus.COMPLETED and (step is None or step.state != "failed"):
                # a COMPLETED job's message is redriven only for a post-completion stage whose
                # step failed (notify, archive, restore): the job's status stays COMPLETED
                transport.release(d, 0)
                done.refused.append(f"{d.message_id}: job {job_id} is COMPLETED")
                continue
            if job is not None and job.status == JobStatus.CANCELLED:
                transport.release(d, 0)
                done.refused.append(f"{d.message_id}: job {job_id} is CANCELLED")
                continue
            attrs = {k: v for k, v in d.attributes.items() if k not in (DEAD_LETTER_REASON, "source_queue", "message_id")}
            with backend.unit():  # on SQLite and PostgreSQL: reset, send and delete, or none of them
                if job is not None and stage is not None and job.status in (JobStatus.FAILED, JobStatus.COMPLETED):
                    # FAILED -> PENDING with a history entry; a misrouted or malformed copy was
                    # recorded under its own step key, forgotten too
                    store.reset(job.job_id, stage=stage.name, reason=f"redriven from {queue}")
                    if f"{stage.name}!rejected" in job.steps:
                        store.reset(job.job_id, stage=f"{stage.name}!rejected", reason=f"redriven from {queue}")
                transport.send(source, Outgoing(body=d.body, message_id=d.message_id, attributes=attrs,
                                                group_id=job_id))
                transport.ack(d)
            done.redriven.append(d.message_id)
    return done


def _count(limit: object) -> int:
    """``limit`` as a count of dead letters to list or move, or ``InvalidArgument``."""
    if not whole(limit, 0):
        raise InvalidArgument(f"limit must be a whole number >= 0, got {limit!r}")
    return limit
