"""Forget finished jobs: purge (``orchestrator purge``) and the pipeline's ``retention``.

Only terminal jobs (COMPLETED, FAILED, CANCELLED) are removed, and only those unchanged for
``older_than_s``: each is deleted on the version it was read at, so a job that a retry or a
post-completion stage touched meanwhile is left alone. Their dead letters go with them (a dead
letter of a job that no longer exists could only be redriven into "unknown job").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.backends import Backend
from orchestrator.codec import Codec
from orchestrator.durations import check_age
from orchestrator.errors import InvalidArgument, MalformedMessage
from orchestrator.pipeline import Pipeline
from orchestrator.status import JobStatus

TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
DLQ_VISIBILITY_S = 60.0


@dataclass
class PurgeReport:
    jobs: list[str] = field(default_factory=list)
    dead_letters: int = 0
    dry_run: bool = False


def purge(pipeline: Pipeline, backend: Backend, *, older_than_s: float,
          statuses: Iterable[JobStatus] = TERMINAL, dry_run: bool = False) -> PurgeReport:
    """Remove the terminal jobs among ``statuses`` unchanged for ``older_than_s`` seconds, and
    their dead letters. ``dry_run`` lists them and removes nothing."""
    older_than_s = check_age(older_than_s)
    wanted = [JobStatus(s) for s in statuses]
    if any(s not in TERMINAL for s in wanted):
        raise InvalidArgument("purge removes finished jobs only: COMPLETED, FAILED or CANCELLED")
    report = PurgeReport(dry_run=dry_run)
    cutoff = backend.clock.now() - older_than_s
    for status in wanted:
        for job in backend.store.query(status=status):
            if job.updated_at > cutoff:
                continue
            if dry_run or backend.store.delete(job.job_id, version=job.version):
                report.jobs.append(job.job_id)
    if report.jobs and not dry_run:
        report.dead_letters = _drop_dead_letters(pipeline, backend, set(report.jobs))
    return report


def apply_retention(pipeline: Pipeline, backend: Backend) -> PurgeReport | None:
    """The pipeline's ``retention``, if it has one (the sweeper runs this)."""
    if pipeline.retention_s is None:
        return None
    return purge(pipeline, backend, older_than_s=pipeline.retention_s)


def _drop_dead_letters(pipeline: Pipeline, backend: Backend, gone: set[str]) -> int:
    transport, dropped = backend.transport, 0
    for queue, codec in {st.dead_letter_queue: st.codec for st in pipeline.stages.values()}.items():
        if transport.depth(queue).visible == 0:
            continue
        kept = []  # held invisible while the queue is scanned, so each is looked at once
        while True:
            batch = transport.receive(queue, max_messages=10, wait_s=0, visibility_s=DLQ_VISIBILITY_S)
            if not batch:
                break
            for d in batch:
                if _job_of(codec, d.body) in gone:
                    transport.ack(d)
                    dropped += 1
                else:
                    kept.append(d)
        for d in kept:
            transport.release(d, 0)
    return dropped


def _job_of(codec: Codec, body: str) -> str | None:
    try:
        return codec.decode(body).job_id
    except MalformedMessage as exc:
        return exc.job_id
