"""Failures with their context: every attempt in the job's history, the last exception and its
traceback on the step, in ``status``, ``dlq show`` and the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from helpers import drain
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orchestrator import JobStatus, PermanentError, Pipeline, Result
from orchestrator.backends import Backend, memory_backend, sqlite_backend
from orchestrator.base import QueueSpec
from orchestrator.cli import main
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Controller, Outcome
from orchestrator.controllers.submit import submit_many
from orchestrator.logging import configure_logging
from orchestrator.middleware import Middleware
from orchestrator.ops.dlq import show


def flaky(fail_times: int, *, max_receives: int = 5) -> Pipeline:
    p = Pipeline("t")
    tries: dict[str, int] = {}

    @p.stage("charge", source="in", max_receives=max_receives, retry_base_s=1, retry_max_s=2)
    def charge(ctx, msg):  # type: ignore[no-untyped-def]
        tries[msg.job_id] = tries.get(msg.job_id, 0) + 1
        if tries[msg.job_id] <= fail_times:
            raise_card_declined(tries[msg.job_id])
        return Result(status=JobStatus.COMPLETED)

    return p


def raise_card_declined(n: int) -> None:
    raise RuntimeError(f"card declined (try {n})")


def test_a_job_that_took_three_attempts_shows_each_of_them(backend: Backend) -> None:
    # Given a handler that fails twice, then succeeds
    p = flaky(2)
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    # When the stage runs until the queue is empty
    assert drain(backend, p, "charge") == [Outcome.RETRIED, Outcome.RETRIED, Outcome.COMMITTED]
    # Then the history holds every attempt: its claim, what it raised, when it ran again
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED
    events = [(h.event, h.reason) for h in job.history if h.event not in ("created",)]
    assert [e for e, _ in events] == ["begin", "retried", "claimed", "retried", "claimed", "commit"]
    retried = [r for e, r in events if e == "retried"]
    assert retried[0] is not None and retried[0].startswith("RuntimeError: card declined (try 1) (attempt 1); again in")
    assert retried[1] is not None and "(try 2) (attempt 2)" in retried[1]
    assert [r for e, r in events if e == "claimed"] == ["attempt 2", "attempt 3"]
    # and each failed attempt keeps its own traceback (bounded), the successful commit none
    tracebacks = [h.traceback for h in job.history if h.event == "retried"]
    assert all(t and "in raise_card_declined" in t and len(t) <= 2048 + 4 for t in tracebacks)
    assert "(try 1)" in tracebacks[0] and "(try 2)" in tracebacks[1]
    assert all(h.traceback is None for h in job.history if h.event != "retried")


def test_a_job_that_gave_up_keeps_the_last_traceback_for_status_and_the_dead_letter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a handler that always fails, on the embedded backend
    db = tmp_path / "o.db"
    backend = sqlite_backend(db, clock=SimClock())
    p = flaky(99, max_receives=3)
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    # When its attempts run out
    assert drain(backend, p, "charge") == [Outcome.RETRIED, Outcome.RETRIED, Outcome.DEAD_LETTERED]
    # Then the step keeps the last attempt's exception, with the handler's frames
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.FAILED
    err = job.steps["charge"].error
    assert err is not None and (err.type, err.message, err.attempt) == ("RuntimeError", "card declined (try 3)", 3)
    assert "Traceback (most recent call last)" in err.traceback and "in raise_card_declined" in err.traceback
    # and the dead-letter view shows it beside the reason
    [dead] = show(backend, "in-dlq", pipeline=p)
    assert dead["error"]["type"] == "RuntimeError" and "raise_card_declined" in dead["error"]["traceback"]
    backend.close()
    # and `status JOB` prints it (what the handling logged before is not the command's output)
    capsys.readouterr()
    assert main(["status", "j", "--backend", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert "step charge: attempt 3 raised RuntimeError: card declined (try 3)" in out
    assert "in raise_card_declined" in out and out.count("retried") == 2
    assert main(["dlq", "show", "in-dlq", "--backend", f"sqlite:///{db}", "--json"]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert "raise_card_declined" in shown["error"]["traceback"]


def test_a_traceback_is_bounded_and_storable_whatever_the_exception_says(backend: Backend) -> None:
    p = Pipeline("t")

    @p.stage("s", source="in", max_receives=1)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        raise ValueError("bad value \udcff\x00 " + "x" * 50_000)

    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    assert drain(backend, p, "s") == [Outcome.DEAD_LETTERED]
    job = backend.store.get("j")
    assert job is not None and job.steps["s"].error is not None
    err = job.steps["s"].error
    assert len(err.traceback) <= 8 * 1024 + 4 and len(err.message) <= 2000
    assert "\\udcff\\x00" in err.message


def test_a_retried_handlers_traceback_is_logged(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True, level="info")
    p = flaky(1)
    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    [got] = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, "charge", backend).handle(got) == Outcome.RETRIED
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [retry] = [line for line in lines if line["event"] == "handler failed; retrying"]
    assert "Traceback (most recent call last)" in retry["exception"] and "raise_card_declined" in retry["exception"]


def test_a_job_purged_while_its_handler_failed_leaves_the_message_to_come_back(backend: Backend) -> None:
    p = Pipeline("t")

    @p.stage("s", source="in", max_receives=3)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        job = backend.store.get(msg.job_id)
        assert job is not None
        backend.store.delete(msg.job_id, version=job.version)  # an operator's purge, just now
        raise RuntimeError("and then the handler failed")

    p.setup(backend)
    p.submit(backend, job_id="j", payload={}, queue="in")
    [got] = backend.transport.receive("in", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, "s", backend).handle(got) == Outcome.RETRIED
    assert backend.transport.depth("in").total == 1 and backend.store.get("j") is None


# -- whatever a handler raises: its own job settles, its batch-mates commit, the logs stay small --
class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot say what it is")


class _UnprintablePermanent(PermanentError):
    def __str__(self) -> str:
        raise RuntimeError("nor can this one")


class _NotText(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


_messages = st.one_of(st.text(st.characters(exclude_categories=()), max_size=50),
                      st.sampled_from(["", "\udcff\x00", "x" * 100_000]),
                      st.integers(1, 1_000_000).map(lambda n: "y" * n))
_raised = st.one_of(
    st.builds(ValueError, _messages), st.builds(PermanentError, _messages), st.builds(KeyError, _messages),
    st.just(_Unprintable()), st.just(_UnprintablePermanent()), st.just(_NotText()),
    st.builds(lambda m: RuntimeError(m, {"nested": [m]}), _messages),
)
_LOGGED_CHARS = 16 * 1024


@given(error=_raised, max_receives=st.sampled_from([1, 3]))
@settings(deadline=None)
def test_whatever_a_handler_raises_settles_its_own_job_and_keeps_every_log_line_small(
        error: BaseException, max_receives: int) -> None:
    p = Pipeline("t")

    @p.stage("s", source="in", max_receives=max_receives)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        if msg.job_id == "bad":
            raise error
        return Result(status=JobStatus.COMPLETED)

    backend = memory_backend(clock=SimClock())
    p.setup(backend)
    submit_many(backend, [("bad", {}), ("good", {})], queue="in")
    with capture_logs() as logs:
        got = backend.transport.receive("in", max_messages=10, wait_s=0, visibility_s=30)
        outcomes = Controller(p, "s", backend, seed=1).handle_batch(got)  # never raises
    by_job = {d.envelope.job_id: o for d, o in zip(got, outcomes, strict=True) if d.envelope is not None}
    assert by_job["good"] == Outcome.COMMITTED
    permanent = isinstance(error, PermanentError)
    assert by_job["bad"] == (Outcome.FAILED if permanent else
                             Outcome.DEAD_LETTERED if max_receives == 1 else Outcome.RETRIED)
    bad = backend.store.get("bad")
    assert bad is not None and bad.status == (JobStatus.RUNNING if by_job["bad"] == Outcome.RETRIED else JobStatus.FAILED)
    # the live exception goes to no renderer, and no line grows with what the exception says
    assert logs and not [e for e in logs if "exc_info" in e]
    assert all(len(v) <= _LOGGED_CHARS for e in logs for v in e.values() if isinstance(v, str))
    failed = [e for e in logs if e["event"] in ("handler failed for good", "handler failed; retrying")]
    assert failed and all(e["exception"].startswith("Traceback (most recent call last)") for e in failed)
    assert all(type(error).__name__ in e["exception"] for e in failed)


@given(error=_raised, hook=st.sampled_from(["before_handle", "after_handle", "on_commit", "on_emit"]))
@settings(deadline=None)
def test_a_middleware_hook_that_raises_anything_is_logged_small_and_changes_nothing(
        error: BaseException, hook: str) -> None:
    class Raising(Middleware):
        pass

    setattr(Raising, hook, lambda self, *args: _raise(error))
    p = Pipeline("t")
    p.stage("s", source="in", emit_to="out")(lambda ctx, msg: Result(status=JobStatus.COMPLETED, emit=[{}]))
    backend = memory_backend(clock=SimClock())
    p.setup(backend)
    backend.transport.ensure_queue(QueueSpec("out"))
    submit_many(backend, [("a", {}), ("b", {})], queue="in")
    with capture_logs() as logs:
        got = backend.transport.receive("in", max_messages=10, wait_s=0, visibility_s=30)
        outcomes = Controller(p, "s", backend, middleware=[Raising()]).handle_batch(got)
    assert outcomes == [Outcome.COMMITTED, Outcome.COMMITTED]
    assert backend.transport.depth("out").total == 2
    failed = [e for e in logs if e["event"] == "middleware hook failed"]
    assert failed and all(e["hook"] == hook and len(e["error"]) <= 2000 for e in failed)


def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("level", ["info", "warning"])
def test_each_message_logs_with_its_own_context_and_info_lines_follow_the_level(level: str) -> None:
    # Given a stage whose handler logs through ctx.log for one job and raises for another
    p = Pipeline("t")

    @p.stage("s", source="in", max_receives=3)
    def s(ctx, msg):  # type: ignore[no-untyped-def]
        ctx.log.warning("handler says", n=msg.payload["n"])
        if msg.job_id == "bad":
            raise RuntimeError("card declined")
        return Result(status=JobStatus.COMPLETED)

    backend = memory_backend(clock=SimClock())
    p.setup(backend)
    submit_many(backend, [("good", {"n": 1}), ("bad", {"n": 2})], queue="in")
    configure_logging(level=level)
    try:
        with capture_logs() as logs:
            got = backend.transport.receive("in", max_messages=10, wait_s=0, visibility_s=30)
            Controller(p, "s", backend, seed=1).handle_batch(got)
    finally:
        structlog.reset_defaults()
    ids = {d.envelope.job_id: d.envelope.id for d in got if d.envelope is not None}
    # Then every line about a message carries that message's id, job and attempt (the
    # handler's own lines too), and the per-commit info line is written only at info
    said = {e["job_id"]: e for e in logs if e["event"] == "handler says"}
    assert {j: (e["n"], e["message_id"], e["attempt"]) for j, e in said.items()} == \
        {"good": (1, ids["good"], 1), "bad": (2, ids["bad"], 1)}
    retried = [e for e in logs if e["event"] == "handler failed; retrying"]
    assert [(e["job_id"], e["message_id"]) for e in retried] == [("bad", ids["bad"])]
    committed = [e for e in logs if e["event"] == "step committed"]
    assert [(e["job_id"], e["message_id"], e["stage"]) for e in committed] == \
        ([("good", ids["good"], "s")] if level == "info" else [])
