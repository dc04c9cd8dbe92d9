"""What becomes of a delivery: one decision, for every case the controller meets.

The controller only finds out what happened and carries out what ``decide`` chooses. What it
finds is one of: a handler's ``Result`` or ``Snooze``, the exception a handler raised, the
``StoreError`` a write got, or one of the situations below, met before or around a handler
(a body that does not decode, a step the job's record shows finished, a worker stopping, a
write the backend refused for this message alone). The table of cases is small enough to
test whole (``tests/test_decide.py``), as controller-runtime keeps its retry policy in one
switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.errors import (
    InvalidPayload,
    InvalidSubmission,
    InvalidTransition,
    JobCancelled,
    PermanentError,
    RecordTooLarge,
    StoreError,
)
from orchestrator.jobdoc import CANCELLED, FAILED, TERMINAL
from orchestrator.stage import Result, Snooze
from orchestrator.status import JobStatus
from orchestrator.storable import described, said


class Verdict(StrEnum):
    """What to do with a delivery. The controller carries it out and reports what happened as
    an ``Outcome`` named after it (RETRY: RETRIED, RELEASE: RELEASED, DROP: CANCELLED, REPLAY:
    DUPLICATE; REJECT and REFUSED: DEAD_LETTERED), the same word in metrics and logs."""

    ACK = "ack"  # commit the result, emit its outbox, delete the message
    FAIL = "fail"  # record the step failed (job FAILED), delete the message: retrying cannot help
    DEAD_LETTER = "dead_letter"  # record the step failed, move the message to the dead-letter queue
    RETRY = "retry"  # transient: make the message visible again after ``delay_s``, an attempt spent
    DISCARD = "discard"  # not ours any more: write nothing, leave the message to its current holder
    SNOOZE = "snooze"  # not yet: visible again after ``delay_s``, no attempt used, status unchanged
    DROP = "drop"  # the job was cancelled: delete the message, write nothing
    REPLAY = "replay"  # the step was finished before: settle the message as its record says
    SKIP = "skip"  # nothing to do for this message: delete it, write nothing
    REJECT = "reject"  # this stage cannot take the message: dead-letter it, noted on its job if any
    RELEASE = "release"  # never started (the worker stops): visible again at once, no attempt spent
    REFUSED = "refused"  # the backend refused this message's own write: dead-letter it with the reason


@dataclass(slots=True)  # not frozen: made per message, and a frozen __init__ costs 6x
class Action:
    verdict: Verdict
    reason: str = ""
    delay_s: float = 0.0
    #: for ACK, the status the commit writes (None: unchanged)
    status: JobStatus | None = None
    #: the situation it was decided on, where carrying it out needs it (REJECT, REFUSED)
    cause: Any = None


ACK = Action(Verdict.ACK)


class NoResult(Exception):
    """The handler never produced a result: every allowed attempt was used up by crashes,
    hangs or stalls before it could finish (the receive count already exceeds max receives)."""


@dataclass(frozen=True)
class Undecodable:
    """The body is not a message of this stage (malformed, or a task it does not run); the job
    it names, where it names one."""

    reason: str
    job_id: str | None = None


@dataclass(frozen=True)
class Unreadable:
    """Decoding raised something that may pass (the object store behind a claim check)."""

    error: BaseException


@dataclass(frozen=True)
class NothingAsked:
    """The message asks for nothing (a stage's ``nothing_to_do`` says so)."""

    reason: str


@dataclass(frozen=True)
class Recorded:
    """The job's record already settles this delivery: its status, and this stage's step."""

    job_status: str
    step: dict[str, Any] | None


@dataclass(frozen=True)
class Stopping:
    """The worker is stopping before this message's handler started."""


@dataclass(frozen=True)
class Refused:
    """The backend refused this message's own read or write (not an outage): ``what`` it was."""

    error: Exception
    what: str


@dataclass(frozen=True)
class UnknownJob:
    """A message for a job nobody created, on a stage that only continues jobs."""

    job_id: str
    stage: str


_SITUATIONS = (Undecodable, Unreadable, NothingAsked, Recorded, Stopping, Refused, UnknownJob)


def recorded(job: dict[str, Any], step_key: str) -> Recorded | None:
    """The ``Recorded`` situation when the job's record settles a delivery for ``step_key``
    (cancelled job, finished step, job FAILED elsewhere); None when the step is still to do."""
    step = job["steps"].get(step_key)
    finished = step is not None and step["state"] in ("committed", "failed")
    if job["status"] in (CANCELLED, FAILED) or finished:
        return Recorded(job["status"], step if finished else None)
    return None


def decide(
    outcome: object, attempt: int, max_receives: int, lease_lost: bool, backoff_s: float,
    waited_s: float = 0.0, max_snooze_s: float | None = None, job_status: str | None = None,
) -> Action:
    """The action for ``outcome``: a situation above, a handler's ``Result`` or ``Snooze`` (any
    other non-exception is an empty result), the exception it raised, or the ``StoreError`` a
    write got.

    ``attempt`` is the delivery's receive count (1-based); ``backoff_s`` the delay a retry of
    this attempt waits; ``lease_lost`` whether the heartbeat found the lease taken over;
    ``waited_s`` how long the message has waited since its first receive, which a snooze may
    extend up to ``max_snooze_s`` (None: without bound); ``job_status`` the job's status as
    the handler saw it (a finished job keeps it: a post-completion stage only adds fields).
    """
    if type(outcome) is Result and not lease_lost:  # the common case, first (once per message)
        status = outcome.status
        return ACK if status is None or (job_status in TERMINAL and status != job_status) else \
            Action(Verdict.ACK, status=status)
    if isinstance(outcome, _SITUATIONS):
        return _before_handling(outcome, attempt=attempt, max_receives=max_receives, backoff_s=backoff_s)
    match outcome:
        case JobCancelled():
            # job_not_cancelled failed: the job was cancelled while the handler ran. Whatever
            # it returned is fenced off; its message has nothing left to do.
            return Action(Verdict.DROP, "job cancelled")
        case StoreError() as refused if not isinstance(refused, (InvalidTransition, RecordTooLarge)):
            # step_not_finished / lease_still_ours failed: someone else committed or holds the
            # step. Their result stands; ours is thrown away.
            return Action(Verdict.DISCARD, f"write refused: {refused}")
        case _ if lease_lost:
            # A lost lease means another delivery may be running this step: nothing we learnt
            # (result, error, even a permanent one) may be written.
            return Action(Verdict.DISCARD, "lease lost during handling")
        case BaseException() as exc:
            return _failure(exc, attempt=attempt, max_receives=max_receives, backoff_s=backoff_s)
        case Snooze() as snooze if max_snooze_s is not None and waited_s + snooze.seconds > max_snooze_s:
            return Action(Verdict.FAIL, f"gave up waiting after {waited_s:.0f}s (max_snooze_s {max_snooze_s:.0f}s)"
                                        + (f": {snooze.reason}" if snooze.reason else ""))
        case Snooze() as snooze:
            return Action(Verdict.SNOOZE, snooze.reason or "snoozed", delay_s=float(snooze.seconds))
        case Result(status=status) if status is not None and not (job_status in TERMINAL and status != job_status):
            return Action(Verdict.ACK, status=status)
        case _:
            # no status change asked, or one a finished job must not take (it keeps its status)
            return ACK


def _before_handling(outcome: object, *, attempt: int, max_receives: int, backoff_s: float) -> Action:
    """The situations met before or around a handler."""
    match outcome:
        case Undecodable(reason=reason):
            return Action(Verdict.REJECT, reason, cause=outcome)
        case Unreadable(error=exc) if attempt < max_receives:
            return Action(Verdict.RETRY, described(exc), delay_s=backoff_s)
        case Unreadable(error=exc):
            return Action(Verdict.REJECT, f"undecodable: {described(exc)} (attempt {attempt} of "
                                          f"{max_receives})")
        case NothingAsked(reason=reason):
            return Action(Verdict.SKIP, reason)
        case UnknownJob(job_id=job_id, stage=stage):
            return Action(Verdict.REJECT, f"unknown job {job_id!r}: stage {stage} only continues jobs that exist "
                                          "(mark it takes_submissions=True to let messages create them)")
        case Recorded(job_status=status) if status == CANCELLED:
            return Action(Verdict.DROP, "job cancelled")
        case Recorded(step=step) if step is not None:
            return Action(Verdict.REPLAY, f"step already {step['state']}")
        case Recorded():
            return Action(Verdict.SKIP, "job already FAILED")
        case Stopping():
            return Action(Verdict.RELEASE, "the worker stopped before the handler started")
        case Refused(error=exc, what=what):
            return Action(Verdict.REFUSED, f"the backend refused {what}: {described(exc)}"[:1000],
                          cause=outcome)
    raise TypeError(f"not a situation: {outcome!r}")


def _failure(exc: BaseException, *, attempt: int, max_receives: int, backoff_s: float) -> Action:
    match exc:
        case InvalidTransition():
            return Action(Verdict.DEAD_LETTER, f"handler asked for an invalid status change: {said(exc)}")
        case RecordTooLarge() | PermanentError() | InvalidSubmission() | InvalidPayload():
            # (the last two: a value the project refused, as an Emit or Snooze built with a
            # bad delay, or a submit of a bad payload: the same code refuses it again)
            return Action(Verdict.FAIL, said(exc) or type(exc).__name__)
        case NoResult():
            return Action(Verdict.DEAD_LETTER, said(exc))
        case _ if attempt >= max_receives:
            return Action(Verdict.DEAD_LETTER, f"{described(exc)} (attempt {attempt} of {max_receives})")
        case _:
            return Action(Verdict.RETRY, described(exc), delay_s=backoff_s)
