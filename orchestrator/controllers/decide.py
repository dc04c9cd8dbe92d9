"""What to do with a delivery once its handler (or its commit) has an outcome: one decision.

The controller asks ``decide`` after the handler returns or raises, and again when the
commit is refused: what becomes of a handler's run is chosen here only. What is settled before
a handler runs (a body that does not decode, a step already committed, a refused begin) the
controller settles itself. The table of cases is small enough to test whole
(``tests/test_decide.py``), as controller-runtime keeps its retry policy in one switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestrator.errors import InvalidTransition, JobCancelled, PermanentError, RecordTooLarge, StoreError
from orchestrator.pipeline import Snooze


class Verdict(StrEnum):
    ACK = "ack"  # commit the result, emit its outbox, delete the message
    FAIL = "fail"  # record the step failed (job FAILED), delete the message: retrying cannot help
    DEAD_LETTER = "dead_letter"  # record the step failed, move the message to the dead-letter queue
    RELEASE = "release"  # transient: make the message visible again after ``delay_s``
    DISCARD = "discard"  # not ours any more: write nothing, leave the message to its current holder
    SNOOZE = "snooze"  # not yet: visible again after ``delay_s``, no attempt used, status unchanged
    DROP = "drop"  # the job was cancelled: delete the message, write nothing


@dataclass(frozen=True)
class Action:
    verdict: Verdict
    reason: str = ""
    delay_s: float = 0.0


ACK = Action(Verdict.ACK)


class NoResult(Exception):
    """The handler never produced a result: every allowed attempt was used up by crashes,
    hangs or stalls before it could finish (the receive count already exceeds max receives)."""


def decide(
    outcome: object, *, attempt: int, max_receives: int, lease_lost: bool, backoff_s: float,
    waited_s: float = 0.0, max_snooze_s: float | None = None,
) -> Action:
    """The action for ``outcome``: a handler's ``Result`` or ``Snooze`` (any non-exception),
    the exception it raised, or the ``StoreError`` its commit got.

    ``attempt`` is the delivery's receive count (1-based); ``backoff_s`` the delay a retry of
    this attempt waits; ``lease_lost`` whether the heartbeat found the lease taken over;
    ``waited_s`` how long the message has waited since its first receive, which a snooze may
    extend up to ``max_snooze_s`` (None: without bound).
    """
    match outcome:
        case JobCancelled():
            # job_not_cancelled failed: the job was cancelled while the handler ran. Whatever
            # it returned is fenced off; its message has nothing left to do.
            return Action(Verdict.DROP, "job cancelled")
        case StoreError() as refused if not isinstance(refused, (InvalidTransition, RecordTooLarge)):
            # step_not_finished / lease_still_ours failed: someone else committed or holds the
            # step. Their result stands; ours is thrown away.
            return Action(Verdict.DISCARD, f"commit refused: {refused}")
        case _ if lease_lost:
            # A lost lease means another delivery may be running this step: nothing we learnt
            # (result, error, even a permanent one) may be written.
            return Action(Verdict.DISCARD, "lease lost during handling")
        case InvalidTransition() as exc:
            return Action(Verdict.DEAD_LETTER, f"handler asked for an invalid status change: {exc}")
        case RecordTooLarge() | PermanentError() as exc:
            return Action(Verdict.FAIL, str(exc) or type(exc).__name__)
        case NoResult() as exc:
            return Action(Verdict.DEAD_LETTER, str(exc))
        case BaseException() as exc if attempt >= max_receives:
            return Action(Verdict.DEAD_LETTER, f"{type(exc).__name__}: {exc} (attempt {attempt} of {max_receives})")
        case BaseException() as exc:
            return Action(Verdict.RELEASE, f"{type(exc).__name__}: {exc}", delay_s=backoff_s)
        case Snooze() as snooze if max_snooze_s is not None and waited_s + snooze.seconds > max_snooze_s:
            return Action(Verdict.FAIL, f"gave up waiting after {waited_s:.0f}s (max_snooze_s {max_snooze_s:.0f}s)"
                                        + (f": {snooze.reason}" if snooze.reason else ""))
        case Snooze() as snooze:
            return Action(Verdict.SNOOZE, snooze.reason or "snoozed", delay_s=float(snooze.seconds))
        case _:
            return ACK
