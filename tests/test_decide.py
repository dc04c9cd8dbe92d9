"""The one retry/terminal decision, as a table."""

from __future__ import annotations

import pytest

from orchestrator import PermanentError, Result, Snooze
from orchestrator.controllers.decide import Action, NoResult, Verdict, decide
from orchestrator.errors import ConflictError, InvalidTransition, JobCancelled, RecordTooLarge

A = dict(attempt=2, max_receives=3, lease_lost=False, backoff_s=4.0)


@pytest.mark.parametrize(("outcome", "overrides", "verdict", "reason_has", "delay"), [
    (Result(), {}, Verdict.ACK, "", 0.0),
    (None, {}, Verdict.ACK, "", 0.0),
    (Result(), {"lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    (PermanentError("input missing"), {}, Verdict.FAIL, "input missing", 0.0),
    (PermanentError("input missing"), {"lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    (RuntimeError("flaky"), {}, Verdict.RELEASE, "RuntimeError: flaky", 4.0),
    (RuntimeError("flaky"), {"attempt": 3}, Verdict.DEAD_LETTER, "RuntimeError: flaky (attempt 3 of 3)", 0.0),
    (RuntimeError("flaky"), {"attempt": 3, "lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    (NoResult("gave up after 3 attempts"), {"attempt": 4}, Verdict.DEAD_LETTER, "gave up after 3", 0.0),
    (ConflictError("step s of job j is already committed"), {}, Verdict.DISCARD, "already committed", 0.0),
    (ConflictError("not ours"), {"lease_lost": True}, Verdict.DISCARD, "commit refused", 0.0),
    (InvalidTransition("COMPLETED -> RUNNING"), {}, Verdict.DEAD_LETTER, "invalid status change", 0.0),
    (RecordTooLarge("j", 500_000, 400_000), {}, Verdict.FAIL, "over the store's", 0.0),
    # a snooze uses no attempt, so even the last one may snooze
    (Snooze(60, "restoring"), {"attempt": 3}, Verdict.SNOOZE, "restoring", 60.0),
    (Snooze(60), {"waited_s": 100.0, "max_snooze_s": 160.0}, Verdict.SNOOZE, "snoozed", 60.0),
    (Snooze(60, "restoring"), {"waited_s": 101.0, "max_snooze_s": 160.0}, Verdict.FAIL,
     "gave up waiting after 101s (max_snooze_s 160s): restoring", 0.0),
    (Snooze(60), {"lease_lost": True}, Verdict.DISCARD, "lease lost", 0.0),
    # the job was cancelled while the handler ran: whatever it returned is dropped with its message
    (JobCancelled("job j is CANCELLED"), {}, Verdict.DROP, "job cancelled", 0.0),
    (JobCancelled("job j is CANCELLED"), {"lease_lost": True}, Verdict.DROP, "job cancelled", 0.0),
])
def test_decide(outcome: object, overrides: dict[str, object], verdict: Verdict, reason_has: str,
                delay: float) -> None:
    action = decide(outcome, **{**A, **overrides})  # type: ignore[arg-type]
    assert action.verdict == verdict
    assert reason_has in action.reason
    assert action.delay_s == delay


def test_ack_carries_nothing_else() -> None:
    assert decide(Result(), **A) == Action(Verdict.ACK)  # type: ignore[arg-type]
