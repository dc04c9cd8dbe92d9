"""Job status, the job record and the pure rules every status store applies.

The rules are plain functions over a ``JobRecord``: each store reads the record, applies a
rule, and writes the result back with one conditional write (compare-and-swap on
``version``). Keeping them here means every backend enforces the same state machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator.errors import ConflictError, InvalidTransition


class JobStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


# COMPLETED only from RUNNING, as in the original GAS run.py; nothing leaves a terminal state.
ALLOWED: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        (JobStatus.PENDING, JobStatus.RUNNING),
        (JobStatus.PENDING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.COMPLETED),
        (JobStatus.RUNNING, JobStatus.FAILED),
    }
)


class OutMessage(BaseModel):
    """One message of a step's outbox, stored encoded so a replay sends identical bytes."""

    kind: Literal["queue", "topic"]
    target: str
    id: str
    body: str


class StepRecord(BaseModel):
    stage: str
    message_id: str
    state: Literal["running", "committed", "failed"] = "running"
    claim: str | None = None
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    outbox: list[OutMessage] = Field(default_factory=list)
    reason: str | None = None
    # After a failure: whether the message belongs in the dead-letter queue (poison) or is
    # simply removed (PermanentError). A redelivery replays this decision.
    dead_letter: bool = False
    # The input message as received, kept so the sweeper can re-drive a step whose message
    # was lost (queue purged, retention expired).
    input: str | None = None
    source: str | None = None


class HistoryEntry(BaseModel):
    at: float
    event: str  # created | begin | commit | fail | step_failed | reset
    stage: str | None = None
    from_status: JobStatus | None = None
    to_status: JobStatus | None = None
    reason: str | None = None
    message_id: str | None = None


class JobRecord(BaseModel):
    job_id: str
    user_id: str | None = None
    status: JobStatus = JobStatus.PENDING
    fields: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    # The job's first message (as submitted), for the sweeper to re-drive.
    origin: OutMessage | None = None
    # Compare-and-swap counter; 0 means "never written by the framework".
    version: int = 0

    def commits(self, stage: str) -> int:
        """How many commit events the history holds for ``stage`` (exactly one, or a bug)."""
        return sum(1 for h in self.history if h.event == "commit" and h.stage == stage)


@dataclass(frozen=True)
class BeginItem:
    job_id: str
    stage: str
    message_id: str
    claim: str
    attempt: int
    input_body: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class CommitItem:
    job_id: str
    stage: str
    message_id: str
    claim: str | None
    status: JobStatus | None
    fields: dict[str, Any] = field(default_factory=dict)
    outbox: list[OutMessage] = field(default_factory=list)


_new = object.__new__
_set = object.__setattr__


def evolve(rec: JobRecord) -> JobRecord:
    """A copy of ``rec`` that a rule may change: the record and its containers are new, the
    step and history entries inside are shared (rules replace them, never change them). A
    deep copy cost more than the rest of a commit together, and ``model_copy`` (three
    ``copy.copy`` calls and an update pass) a quarter of the memory backend's time: this
    builds the copy as pydantic's own ``__copy__`` does, minus what a plain model without
    extra or private attributes does not have."""
    out = _new(JobRecord)
    d = dict(rec.__dict__)
    d["fields"], d["steps"], d["history"] = dict(rec.fields), dict(rec.steps), list(rec.history)
    _set(out, "__dict__", d)
    _set(out, "__pydantic_fields_set__", set(rec.__pydantic_fields_set__) | {"fields", "steps", "history"})
    _set(out, "__pydantic_extra__", None)
    _set(out, "__pydantic_private__", None)
    return out


def _replace(model: StepRecord, **changes: Any) -> StepRecord:
    """``model_copy(update=...)`` for our plain models, without its three ``copy.copy``
    calls (5% of a commit): the values given are trusted, as ``model_copy``'s are."""
    out = _new(type(model))
    d = dict(model.__dict__)
    d.update(changes)
    _set(out, "__dict__", d)
    _set(out, "__pydantic_fields_set__", set(model.__pydantic_fields_set__) | changes.keys())
    _set(out, "__pydantic_extra__", None)
    _set(out, "__pydantic_private__", None)
    return out


def new_job(job_id: str, *, user_id: str | None, fields: dict[str, Any], now: float,
            origin: OutMessage | None = None) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        user_id=user_id,
        origin=origin,
        fields=dict(fields),
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(at=now, event="created", to_status=JobStatus.PENDING)],
    )


def check_transition(current: JobStatus, requested: JobStatus, rec: JobRecord) -> None:
    if requested != current and (current, requested) not in ALLOWED:
        raise InvalidTransition(f"job {rec.job_id}: {current} -> {requested} is not allowed", current=rec)


def apply_begin(
    rec: JobRecord, *, stage: str, message_id: str, claim: str, attempt: int, now: float,
    input_body: str | None = None, source: str | None = None,
) -> JobRecord:
    """Claim ``stage`` for this delivery; PENDING becomes RUNNING.

    Raises ``ConflictError`` when the step is already finished (committed or failed) or the
    job is FAILED: the caller replays the recorded outcome instead of running the handler.
    """
    step = rec.steps.get(stage)
    if step is not None and step.state != "running":
        raise ConflictError(f"step {stage} of job {rec.job_id} is already {step.state}", current=rec)
    if rec.status == JobStatus.FAILED:
        raise ConflictError(f"job {rec.job_id} is FAILED", current=rec)
    # newer_claim_wins: receive counts only grow, so a holder of an older copy of the same
    # message (a stalled process waking up) must not take the step from the current holder.
    if step is not None and step.message_id == message_id and step.attempt > attempt:
        raise ConflictError(
            f"step {stage} of job {rec.job_id} is held by attempt {step.attempt}, not {attempt}", current=rec
        )
    out = evolve(rec)
    # A newer claim replaces an older one: the older holder's lease has lapsed (the queue
    # redelivered the message), so from here on its commit must lose (lease fencing).
    out.steps[stage] = StepRecord(
        stage=stage, message_id=message_id, claim=claim, attempt=attempt, started_at=now,
        input=input_body, source=source,
    )
    if out.status == JobStatus.PENDING:
        out.status = JobStatus.RUNNING
        out.history.append(
            HistoryEntry(
                at=now, event="begin", stage=stage, message_id=message_id,
                from_status=JobStatus.PENDING, to_status=JobStatus.RUNNING,
            )
        )
    out.updated_at = now
    return out


def _own_running_step(rec: JobRecord, stage: str, claim: str | None) -> None:
    step = rec.steps.get(stage)
    # step_not_finished: the first committer wins; anyone later gets a conflict.
    if step is not None and step.state != "running":
        raise ConflictError(f"step {stage} of job {rec.job_id} is already {step.state}", current=rec)
    # lease_still_ours: a holder whose claim was replaced lost its lease and must not write.
    if claim is not None and (step is None or step.claim != claim):
        raise ConflictError(f"lease on step {stage} of job {rec.job_id} is no longer ours", current=rec)


def apply_commit(
    rec: JobRecord,
    *,
    stage: str,
    message_id: str,
    claim: str | None,
    status: JobStatus | None,
    fields: dict[str, Any],
    outbox: list[OutMessage],
    now: float,
) -> JobRecord:
    """Record the step's result, its fields and its outbox; optionally move the status.

    ``claim=None`` is a lazy claim (a stage with ``claim="lazy"`` writes no begin): the step
    is created here, a PENDING job passes through RUNNING in the same write, and the only
    condition is that nobody committed the step first.
    """
    _own_running_step(rec, stage, claim)
    out = evolve(rec)
    if claim is None and out.status == JobStatus.PENDING:
        out.status = JobStatus.RUNNING
        out.history.append(HistoryEntry(at=now, event="begin", stage=stage, message_id=message_id,
                                        from_status=JobStatus.PENDING, to_status=JobStatus.RUNNING))
    if status is not None:
        check_transition(out.status, status, rec)
    prev = out.steps.get(stage)
    out.steps[stage] = (_replace(prev, state="committed", finished_at=now, outbox=list(outbox))
                        if prev is not None else
                        StepRecord(stage=stage, message_id=message_id, started_at=now, state="committed",
                                   finished_at=now, outbox=list(outbox)))
    out.fields.update(fields)
    before = out.status
    if status is not None:
        out.status = status
    out.history.append(
        HistoryEntry(
            at=now, event="commit", stage=stage, message_id=message_id,
            from_status=before, to_status=out.status,
        )
    )
    out.updated_at = now
    return out


def apply_fail(
    rec: JobRecord,
    *,
    stage: str,
    message_id: str,
    claim: str | None,
    reason: str,
    dead_letter: bool,
    now: float,
) -> JobRecord:
    """Mark the step failed; the job becomes FAILED unless it is already terminal.

    A post-completion stage (notify, archive) that fails leaves a COMPLETED job COMPLETED:
    status never goes backwards, and the failure is kept in the step and the history.
    """
    _own_running_step(rec, stage, claim)
    out = evolve(rec)
    prev = out.steps.get(stage)
    out.steps[stage] = StepRecord(
        stage=stage, message_id=message_id, state="failed", claim=claim,
        attempt=prev.attempt if prev else 0, started_at=prev.started_at if prev else now,
        finished_at=now, reason=reason, dead_letter=dead_letter,
    )
    before = out.status
    if not before.terminal:
        out.status = JobStatus.FAILED
        out.history.append(
            HistoryEntry(at=now, event="fail", stage=stage, message_id=message_id,
                         from_status=before, to_status=JobStatus.FAILED, reason=reason)
        )
    else:
        out.history.append(
            HistoryEntry(at=now, event="step_failed", stage=stage, message_id=message_id,
                         from_status=before, to_status=before, reason=reason)
        )
    out.updated_at = now
    return out


def apply_reset(rec: JobRecord, *, stage: str, reason: str, now: float) -> JobRecord:
    """Operator redrive: a FAILED job goes back to PENDING and the failed step is forgotten."""
    if rec.status == JobStatus.COMPLETED:
        raise InvalidTransition(f"job {rec.job_id} is COMPLETED; refusing to reset it", current=rec)
    out = evolve(rec)
    out.steps.pop(stage, None)
    before = out.status
    out.status = JobStatus.PENDING
    out.history.append(HistoryEntry(at=now, event="reset", stage=stage, from_status=before,
                                    to_status=JobStatus.PENDING, reason=reason))
    out.updated_at = now
    return out
