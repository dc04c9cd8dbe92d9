"""The sweeper: level-triggered repair of jobs whose messages went missing.

It looks at state, not events: every job that is not terminal and has not changed for
``older_than_s`` seconds is checked, and
- a committed step whose outbox never reached a consumer (no step of the consuming stage)
  has its outbox emitted again (same ids: consumers treat copies as duplicates);
- a begun step (its message lost while in flight) gets its input message back on its queue;
- a job with no step at all gets its first message again.
Re-sending is idempotent by design, so a sweep that races live work costs only duplicates. A
message due later (a delayed submit or emit) is waiting in its queue, not missing: it is left
alone until its time has passed, and re-sent no earlier than that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.backends import Backend
from orchestrator.base import Outgoing
from orchestrator.durations import check_age
from orchestrator.pipeline import Pipeline
from orchestrator.status import JobRecord, JobStatus, OutMessage

DEFAULT_OLDER_THAN_S = 300.0


@dataclass
class SweepReport:
    checked: int = 0
    actions: list[str] = field(default_factory=list)


def _consumers(pipeline: Pipeline, backend: Backend, m: OutMessage) -> list[str]:
    """Names of the stages that consume an outbox message."""
    queues = [m.target] if m.kind == "queue" else [q for q, _ in backend.topic.subscriptions(m.target)]
    return [st.name for st in pipeline.stages.values() if st.source in queues]


def _send(backend: Backend, m: OutMessage, job_id: str) -> None:
    out = Outgoing(body=m.body, message_id=m.id, group_id=job_id, priority=m.priority)
    if m.kind == "topic":
        backend.topic.publish_batch(m.target, [out])
    else:
        backend.transport.send(m.target, out)


def _waiting(m: OutMessage, now: float, older_than_s: float) -> bool:
    """A delayed message that is not yet overdue: still in its queue, not lost."""
    return m.due_at is not None and now < m.due_at + older_than_s


def sweep_job(pipeline: Pipeline, backend: Backend, job: JobRecord, *, dry_run: bool = False,
              older_than_s: float = 0.0) -> list[str]:
    actions = []
    now = backend.clock.now()
    for name, step in job.steps.items():
        if step.state == "committed":
            for m in step.outbox:
                if _waiting(m, now, older_than_s):
                    continue
                missing = [c for c in _consumers(pipeline, backend, m) if c not in job.steps]
                if missing:
                    actions.append(f"{job.job_id}: re-emitted {m.id} from {name} to {m.target} ({', '.join(missing)})")
                    if not dry_run:
                        _send(backend, m, job.job_id)
        elif step.state == "running" and step.input is not None and step.source:
            actions.append(f"{job.job_id}: re-sent the input of {name} to {step.source}")
            if not dry_run:
                backend.transport.send(step.source, Outgoing(body=step.input, message_id=step.message_id,
                                                             group_id=job.job_id))
    if not job.steps and job.origin is not None:
        if _waiting(job.origin, now, older_than_s):
            return actions
        if not _consumers(pipeline, backend, job.origin):
            # re-sending would only strand it again (and create the topic or queue)
            actions.append(f"{job.job_id}: NOT re-sent: no stage consumes {job.origin.kind} {job.origin.target} "
                           "(see `orchestrator doctor`)")
            return actions
        actions.append(f"{job.job_id}: re-sent its first message to {job.origin.target}")
        if not dry_run:
            _send(backend, job.origin, job.job_id)
    return actions


def sweep(pipeline: Pipeline, backend: Backend, *, older_than_s: float = DEFAULT_OLDER_THAN_S,
          dry_run: bool = False) -> SweepReport:
    older_than_s = check_age(older_than_s)
    report = SweepReport()
    now = backend.clock.now()
    for status in (JobStatus.PENDING, JobStatus.RUNNING):
        for job in backend.store.query(status=status):
            if now - job.updated_at < older_than_s:
                continue
            report.checked += 1
            report.actions += sweep_job(pipeline, backend, job, dry_run=dry_run, older_than_s=older_than_s)
    if pipeline.retention_s is not None:
        from orchestrator.ops.purge import purge

        purged = purge(pipeline, backend, older_than_s=pipeline.retention_s, dry_run=dry_run)
        if purged.jobs:
            report.actions.append(f"{'would purge' if dry_run else 'purged'} {len(purged.jobs)} finished jobs "
                                  f"older than the retention ({pipeline.retention_s:.0f}s)")
    return report
