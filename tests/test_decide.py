"""The one decision, as a table: every case the controller meets, before, around and after a
handler, and what becomes of the delivery."""

from __future__ import annotations

import pytest

from orchestrator import JobStatus, PermanentError, Result, Snooze
from orchestrator.controllers.decide import (
    Action,
    NoResult,
    NothingAsked,
    Recorded,
    Refused,
    Stopping,
    Undecodable,
    UnknownJob,
    Unreadable,
    Verdict,
    decide,
    recorded,
)
from orchestrator.errors import (
    ConflictError,
    InvalidPayload,
    InvalidSubmission,
    InvalidTransition,
    JobCancelled,
    RecordTooLarge,
)

A = dict(attempt=2, max_receives=3, lease_lost=False, backoff_s=4.0)


@pytest.mark.parametrize(("outcome", "overrides", "verdict", "reason_has", "delay"), [
    (Result(), {}, Verdict.ACK, "", 0.0),
    (None, {}, Verdict.ACK, "", 0.0),
    (Result(), {"lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    (PermanentError("input missing"), {}, Verdict.FAIL, "input missing", 0.0),
    (PermanentError("input missing"), {"lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    (RuntimeError("flaky"), {}, Verdict.RETRY, "RuntimeError: flaky", 4.0),
    (RuntimeError("flaky"), {"attempt": 3}, Verdict.DEAD_LETTER, "RuntimeError: flaky (attempt 3 of 3)", 0.0),
    (RuntimeError("flaky"), {"attempt": 3, "lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    (NoResult("gave up after 3 attempts"), {"attempt": 4}, Verdict.DEAD_LETTER, "gave up after 3", 0.0),
    (ConflictError("step s of job j is already committed"), {}, Verdict.DISCARD, "already committed", 0.0),
    (ConflictError("not ours"), {"lease_lost": True}, Verdict.DISCARD, "write refused", 0.0),
    (InvalidTransition("COMPLETED -> RUNNING"), {}, Verdict.DEAD_LETTER, "invalid status change", 0.0),
    (RecordTooLarge("j", 500_000, 400_000), {}, Verdict.FAIL, "over the store's", 0.0),
    # a value the project refused (an Emit or Snooze built badly, a submit of a bad payload):
    # at the first attempt, as a PermanentError
    (InvalidSubmission("priority must be an integer 0..9"), {}, Verdict.FAIL, "priority must be", 0.0),
    (InvalidPayload("payload is not JSON"), {}, Verdict.FAIL, "payload is not JSON", 0.0),
    # a snooze uses no attempt, so even the last one may snooze
    (Snooze(60, "restoring"), {"attempt": 3}, Verdict.SNOOZE, "restoring", 60.0),
    (Snooze(60), {"waited_s": 100.0, "max_snooze_s": 160.0}, Verdict.SNOOZE, "snoozed", 60.0),
    (Snooze(60, "restoring"), {"waited_s": 101.0, "max_snooze_s": 160.0}, Verdict.FAIL,
     "gave up waiting after 101s (max_snooze_s 160s): restoring", 0.0),
    (Snooze(60), {"lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    # the job was cancelled while the handler ran: whatever it returned is dropped with its message
    (JobCancelled("job j is CANCELLED"), {}, Verdict.DROP, "job cancelled", 0.0),
    (JobCancelled("job j is CANCELLED"), {"lease_lost": True}, Verdict.DROP, "job cancelled", 0.0),
    # a finished job keeps its status: the commit of a post-completion stage writes none
    (Result(status=JobStatus.COMPLETED), {"job_status": "RUNNING"}, Verdict.ACK, "", 0.0),
    (Result(status=JobStatus.FAILED), {"job_status": "COMPLETED"}, Verdict.ACK, "", 0.0),
    # before a handler: the body, the job's record, the worker, the backend
    (Undecodable("malformed message: no job_id", "j"), {}, Verdict.REJECT, "malformed message", 0.0),
    (Undecodable("unknown task 'x' for stage s"), {"lease_lost": True}, Verdict.REJECT, "unknown task", 0.0),
    (Unreadable(OSError("object store down")), {}, Verdict.RETRY, "OSError: object store down", 4.0),
    (Unreadable(OSError("object store down")), {"attempt": 3}, Verdict.REJECT, "undecodable: OSError", 0.0),
    (NothingAsked("no archives to restore"), {}, Verdict.SKIP, "no archives", 0.0),
    (UnknownJob("j9", "notify"), {}, Verdict.REJECT, "unknown job 'j9': stage notify only continues", 0.0),
    (Recorded("CANCELLED", {"state": "committed"}), {}, Verdict.DROP, "job cancelled", 0.0),
    (Recorded("COMPLETED", {"state": "committed"}), {}, Verdict.REPLAY, "already committed", 0.0),
    (Recorded("FAILED", {"state": "failed"}), {}, Verdict.REPLAY, "already failed", 0.0),
    (Recorded("FAILED", None), {}, Verdict.SKIP, "job already FAILED", 0.0),
    (Stopping(), {}, Verdict.RELEASE, "worker stopped", 0.0),
    (Refused(ValueError("NUL in text"), "its commit"), {}, Verdict.REFUSED,
     "the backend refused its commit: ValueError: NUL in text", 0.0),
])
def test_decide(outcome: object, overrides: dict[str, object], verdict: Verdict, reason_has: str,
                delay: float) -> None:
    action = decide(outcome, **{**A, **overrides})  # type: ignore[arg-type]
    assert action.verdict == verdict
    assert reason_has in action.reason
    assert action.delay_s == delay


def test_ack_carries_nothing_else() -> None:
    assert decide(Result(), **A) == Action(Verdict.ACK)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "requested", "written"), [
    ("RUNNING", JobStatus.COMPLETED, JobStatus.COMPLETED),
    ("PENDING", JobStatus.RUNNING, JobStatus.RUNNING),
    ("COMPLETED", JobStatus.COMPLETED, JobStatus.COMPLETED),
    ("COMPLETED", JobStatus.FAILED, None),  # a post-completion stage cannot move a finished job
    ("FAILED", JobStatus.COMPLETED, None),
    ("RUNNING", None, None),
])
def test_an_ack_carries_the_status_the_commit_writes(status: str, requested: JobStatus | None,
                                                     written: JobStatus | None) -> None:
    action = decide(Result(status=requested), **A, job_status=status)  # type: ignore[arg-type]
    assert action == Action(Verdict.ACK, status=written)


@pytest.mark.parametrize(("status", "step", "settled"), [
    ("RUNNING", None, None),
    ("RUNNING", {"state": "running"}, None),
    ("RUNNING", {"state": "committed"}, Recorded("RUNNING", {"state": "committed"})),
    ("FAILED", {"state": "failed"}, Recorded("FAILED", {"state": "failed"})),
    ("FAILED", {"state": "running"}, Recorded("FAILED", None)),
    ("CANCELLED", None, Recorded("CANCELLED", None)),
    ("COMPLETED", None, None),  # a post-completion stage still has its step to do
])
def test_the_job_record_settles_a_delivery_only_when_its_step_or_job_is_finished(
        status: str, step: dict[str, str] | None, settled: Recorded | None) -> None:
    job = {"status": status, "steps": {} if step is None else {"s": step}}
    assert recorded(job, "s") == settled


def test_every_verdict_is_reachable_from_the_table() -> None:
    reached = {row[2] for row in test_decide.pytestmark[0].args[1]}  # type: ignore[attr-defined]
    assert reached == set(Verdict)
