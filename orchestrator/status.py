"""Job status and the typed job record users see.

The stores keep the record as a plain document and apply the rules to that
(``orchestrator.jobdoc``): each store reads the document, applies a rule, and writes the
result back with one conditional write (compare-and-swap on ``version``). Keeping the rules in
one place means every backend enforces the same state machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


# COMPLETED only from RUNNING, as in the original GAS run.py; nothing leaves a terminal state
# (but an operator's retry of a FAILED job, and a redrive: logged ways back to PENDING).
ALLOWED: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        (JobStatus.PENDING, JobStatus.RUNNING),
        (JobStatus.PENDING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.COMPLETED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.PENDING, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.CANCELLED),
    }
)
#: the history events that may move a job back to PENDING from a terminal status
WAYS_BACK = frozenset({"retry", "reset"})


class OutMessage(BaseModel):
    """One message of a step's outbox, stored encoded so a replay sends identical bytes."""

    kind: Literal["queue", "topic"]
    target: str
    id: str
    body: str
    #: when the message may be received (a time on the backend's clock; None: at once). A
    #: replay after a crash keeps the time, not the delay. Most messages are due at once at
    #: priority 0, and a job record carries every outbox (rewritten on every step): those
    #: defaults are left out of the JSON.
    due_at: float | None = Field(default=None, exclude_if=lambda v: v is None)
    priority: int = Field(default=0, exclude_if=lambda v: v == 0)


class StepError(BaseModel):
    """What a step's last failed attempt raised: kept on the step, so ``status JOB``, the
    dead-letter view and the API show why without digging through logs."""

    type: str
    message: str
    traceback: str = ""  # the last 8 KB of the formatted traceback
    attempt: int = 0
    at: float = 0.0


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
    # A part's result (its handler's fields), kept for the join rather than merged into the
    # job's fields, where the parts would overwrite each other (left out of other steps' JSON).
    result: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)
    # The last failed attempt's exception (left out of the JSON while there is none).
    error: StepError | None = Field(default=None, exclude_if=lambda v: v is None)


class HistoryEntry(BaseModel):
    at: float
    # created | begin | claimed | retried | released | lease_lost | snoozed | commit | fail |
    # step_failed | cancelled | retry | reset
    event: str
    stage: str | None = None
    from_status: JobStatus | None = None
    to_status: JobStatus | None = None
    reason: str | None = None
    message_id: str | None = None
    # A failed attempt's traceback (its last 2 KB; left out of the JSON while there is none):
    # every attempt's, where the step keeps only the last one's in full.
    traceback: str | None = Field(default=None, exclude_if=lambda v: v is None)


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

    @property
    def due_at(self) -> float | None:
        """When a delayed or scheduled job's first message comes due (None: at once)."""
        return self.origin.due_at if self.origin is not None else None

    def commits(self, stage: str) -> int:
        """How many commit events the history holds for ``stage`` (exactly one, or a bug)."""
        return sum(1 for h in self.history if h.event == "commit" and h.stage == stage)


@dataclass(frozen=True)
class NewJob:
    """A job to create PENDING (``StatusStore.create_docs``)."""

    job_id: str
    user_id: str | None = None
    fields: dict[str, Any] | None = None
    origin: OutMessage | None = None


@dataclass(slots=True)  # not frozen: made per message, and a frozen __init__ costs 6x
class BeginItem:
    job_id: str
    stage: str
    message_id: str
    claim: str
    attempt: int
    input_body: str | None = None
    source: str | None = None
    #: when the step started, if before the begin is written (a deferred begin); None: now
    started_at: float | None = None


@dataclass(frozen=True)
class JoinTrigger:
    """What a part's commit (or failure) carries: when it is the last of the job's ``parts``
    steps ``<stage>#0 .. #parts-1`` to finish, ``message`` (the join's one message) joins its
    outbox. The job's compare-and-swap makes exactly one part the last."""

    stage: str
    parts: int
    message: OutMessage
    allow_failed: bool = False


@dataclass(slots=True)  # not frozen: made per message, and a frozen __init__ costs 6x
class CommitItem:
    job_id: str
    stage: str
    message_id: str
    claim: str | None
    status: JobStatus | None
    fields: dict[str, Any] = field(default_factory=dict)
    outbox: list[OutMessage] = field(default_factory=list)
    #: a part's result, kept in its step (None: not a part)
    result: dict[str, Any] | None = None
    join: JoinTrigger | None = None
    #: the delivery's receive count and when its handler started, recorded on a step the commit
    #: creates (no begin wrote it)
    attempt: int = 0
    started_at: float | None = None
