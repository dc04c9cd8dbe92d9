"""Cancel and retry, on every backend: what they change, what they refuse, and what a cancelled
job's messages and running handlers may still do (nothing)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from helpers import aws_test_env, drain

from orchestrator import Controller, Emit, JobStatus, PermanentError, Pipeline, Result, jobdoc
from orchestrator.backends import Backend
from orchestrator.cli import main
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Outcome
from orchestrator.errors import InvalidTransition, JobNotFound, RetryImpossible
from orchestrator.jobdoc import new_doc


# -- the rules, as a table ------------------------------------------------------------------
@pytest.mark.parametrize(("status", "outcome"), [
    ("PENDING", "CANCELLED"), ("RUNNING", "CANCELLED"), ("CANCELLED", "CANCELLED"),
    ("COMPLETED", "refused"), ("FAILED", "refused"),
])
def test_cancel_moves_only_a_live_job_and_is_idempotent(status: str, outcome: str) -> None:
    doc = {**new_doc("j", user_id=None, fields={}, now=1.0), "status": status}
    if outcome == "refused":
        with pytest.raises(InvalidTransition, match=f"is {status}"):
            jobdoc.cancel(doc, reason="r", now=2.0)
        return
    out = jobdoc.cancel(doc, reason="no longer needed", now=2.0)
    assert out["status"] == outcome
    if status == "CANCELLED":
        assert out is doc  # nothing to write
    else:
        assert out["history"][-1]["event"] == "cancelled" and out["history"][-1]["reason"] == "no longer needed"


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "COMPLETED", "CANCELLED"])
def test_only_a_failed_job_can_be_retried(status: str) -> None:
    doc = {**new_doc("j", user_id=None, fields={}, now=1.0), "status": status}
    with pytest.raises(InvalidTransition, match="only a FAILED job can be retried"):
        jobdoc.retry(doc, stage="s", message_id="m", input_body="{}", source="q", reason="r", now=2.0)


# -- on every backend -----------------------------------------------------------------------
def two_stage(calls: list[str]) -> Pipeline:
    p = Pipeline("ctl")

    @p.stage("first", source="a", emit_to="b", max_receives=2, retry_base_s=1, retry_max_s=1)
    def first(ctx, msg):  # type: ignore[no-untyped-def]
        calls.append(f"first:{msg.job_id}")
        if msg.payload.get("fail") == "permanent":
            raise PermanentError("bad input")
        return Result(status=JobStatus.RUNNING, emit=[Emit({"n": 1})])

    @p.stage("second", source="b", max_receives=2, retry_base_s=1, retry_max_s=1, begin="lazy")
    def second(ctx, msg):  # type: ignore[no-untyped-def]
        calls.append(f"second:{msg.job_id}")
        if ctx.job.fields.get("broken", True) and msg.job_id.startswith("flaky"):
            raise RuntimeError("dependency down")
        return Result(status=JobStatus.COMPLETED)

    return p


def test_a_cancelled_jobs_messages_are_acked_without_running_a_handler(backend: Backend) -> None:
    calls: list[str] = []
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="a")
    rec = p.cancel(backend, "j1", reason="customer withdrew")
    assert rec.status == JobStatus.CANCELLED
    assert p.cancel(backend, "j1").status == JobStatus.CANCELLED  # idempotent
    assert drain(backend, p, "first") == [Outcome.CANCELLED]
    assert calls == [] and backend.transport.depth("a").total == 0
    job = backend.store.get("j1")
    assert job is not None and [h.event for h in job.history] == ["created", "cancelled"]


def test_cancelling_a_finished_job_or_an_unknown_one_is_refused(backend: Backend) -> None:
    calls: list[str] = []
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="done", payload={}, queue="a")
    drain(backend, p, "first")
    drain(backend, p, "second")
    with pytest.raises(InvalidTransition, match="COMPLETED"):
        p.cancel(backend, "done")
    with pytest.raises(JobNotFound):
        p.cancel(backend, "nosuch")


def test_a_handler_running_when_its_job_is_cancelled_sees_it_and_its_result_is_fenced_off(backend: Backend) -> None:
    clock = backend.clock
    assert isinstance(clock, SimClock)
    p = Pipeline("long")
    seen: list[bool] = []

    @p.stage("work", source="work", emit_to="next", visibility_timeout_s=30)
    def work(ctx, msg):  # type: ignore[no-untyped-def]
        seen.append(ctx.cancelled)
        p.cancel(backend, msg.job_id, reason="stop")  # as if from another process, mid-run
        seen.append(ctx.cancelled)  # not looked at again within the heartbeat interval
        clock.advance(11)
        seen.append(ctx.cancelled)
        return Result(status=JobStatus.RUNNING, fields={"x": 1}, emit=[{"n": 1}])

    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="work")
    got = backend.transport.receive("work", max_messages=1, wait_s=0, visibility_s=30)
    assert Controller(p, "work", backend).handle_batch(got) == [Outcome.CANCELLED]
    assert seen == [False, False, True]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.CANCELLED and "x" not in job.fields
    assert "commit" not in [h.event for h in job.history]
    assert backend.transport.depth("next").total == 0 and backend.transport.depth("work").total == 0


def test_a_job_failed_by_a_permanent_error_is_retried_from_its_step_record(backend: Backend) -> None:
    calls: list[str] = []
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={"fail": "permanent"}, queue="a")
    assert drain(backend, p, "first") == [Outcome.FAILED]
    # When the operator retries it (the input still says "permanent": it fails again, as it should)
    rec = p.retry(backend, "j1", by="ops@example.org", reason="fixed the parser")
    assert rec.status == JobStatus.PENDING
    entry = rec.history[-1]
    assert (entry.event, entry.stage, entry.from_status, entry.to_status) == (
        "retry", "first", JobStatus.FAILED, JobStatus.PENDING)
    assert entry.reason == "retried by ops@example.org: fixed the parser"
    assert drain(backend, p, "first") == [Outcome.FAILED]
    assert calls == ["first:j1", "first:j1"]


def test_a_job_dead_lettered_by_a_lazy_stage_is_retried_from_the_dead_letter_queue(backend: Backend) -> None:
    calls: list[str] = []
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="flaky-1", payload={}, queue="a")
    p.submit(backend, job_id="flaky-2", payload={}, queue="a")
    drain(backend, p, "first")
    assert drain(backend, p, "second") == [Outcome.RETRIED] * 2 + [Outcome.DEAD_LETTERED] * 2
    assert backend.transport.depth("b-dlq").total == 2
    # When the dependency is back and one job is retried
    backend.store.update_fields("flaky-1", {"broken": False})
    rec = p.retry(backend, "flaky-1")
    assert rec.status == JobStatus.PENDING
    # Then its dead letter is gone (the other's stays), and the job completes
    assert backend.transport.depth("b-dlq").total == 1
    assert drain(backend, p, "second") == [Outcome.COMMITTED]
    job = backend.store.get("flaky-1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.commits("second") == 1
    other = backend.store.get("flaky-2")
    assert other is not None and other.status == JobStatus.FAILED


def test_a_retry_is_refused_for_a_job_that_is_not_failed_or_unknown(backend: Backend) -> None:
    calls: list[str] = []
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="a")
    with pytest.raises(InvalidTransition, match="PENDING; only a FAILED job"):
        p.retry(backend, "j1")
    p.cancel(backend, "j1")
    with pytest.raises(InvalidTransition, match="CANCELLED; only a FAILED job"):
        p.retry(backend, "j1")
    with pytest.raises(JobNotFound):
        p.retry(backend, "nosuch")


def test_a_retry_whose_input_is_nowhere_says_so(backend: Backend) -> None:
    calls: list[str] = []
    p = two_stage(calls)
    p.setup(backend)
    p.submit(backend, job_id="flaky-1", payload={}, queue="a")
    drain(backend, p, "first")
    drain(backend, p, "second")
    backend.transport.purge("b-dlq")
    with pytest.raises(RetryImpossible, match="the input of stage second was not kept, and is not in b-dlq"):
        p.retry(backend, "flaky-1")
    job = backend.store.get("flaky-1")
    assert job is not None and job.status == JobStatus.FAILED


# -- the command line -----------------------------------------------------------------------
@pytest.fixture
def ctl_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "ctlpipe.py").write_text(
        "from orchestrator import Pipeline, Result, PermanentError\n"
        "pipeline = Pipeline('c')\n"
        "@pipeline.stage('s', source='in')\n"
        "def s(ctx, msg):\n"
        "    raise PermanentError('nope')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cancel_and_retry_on_the_command_line(ctl_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{ctl_dir}/c.db"
    assert main(["submit", "ctlpipe:pipeline", "--queue", "in", "--job-id", "a", "--backend", db]) == 0
    assert main(["submit", "ctlpipe:pipeline", "--queue", "in", "--job-id", "b", "--backend", db]) == 0
    assert main(["cancel", "a", "--reason", "changed my mind", "--backend", db]) == 0
    assert "a CANCELLED" in capsys.readouterr().out
    assert main(["worker", "ctlpipe:pipeline", "--stage", "s", "--until-idle", "--backend", db,
                 "--log-level", "error"]) == 0
    assert main(["retry", "b", "--backend", db]) == 0
    assert "b PENDING: stage s sent its input again" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["cancel", "nosuch"], "no job 'nosuch'"),
    (["retry", "nosuch"], "no job 'nosuch'"),
    (["cancel", "done"], "is FAILED; only a PENDING or RUNNING job can be cancelled"),
    (["retry", "live"], "is PENDING; only a FAILED job can be retried"),
    (["cancel", ""], "job id cannot be empty"),
])
def test_bad_cancel_and_retry_requests_are_one_line_and_exit_2(
        ctl_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{ctl_dir}/c.db"
    main(["submit", "ctlpipe:pipeline", "--queue", "in", "--job-id", "done", "--backend", db])
    main(["worker", "ctlpipe:pipeline", "--stage", "s", "--until-idle", "--backend", db, "--log-level", "error"])
    main(["submit", "ctlpipe:pipeline", "--queue", "in", "--job-id", "live", "--backend", db])
    capsys.readouterr()
    try:
        code = main([*args, "--backend", db])
    except SystemExit as done:
        code = int(done.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1


def test_a_concurrent_cancel_and_commit_leave_the_job_either_cancelled_or_completed_never_both(
        backend: Backend) -> None:
    # A cancel racing a batch's commits, from another thread
    p = Pipeline("race")
    p.stage("s", source="s")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    for i in range(20):
        p.submit(backend, job_id=f"r{i}", payload={}, queue="s")
    got = backend.transport.receive("s", max_messages=20, wait_s=0, visibility_s=30)

    def cancel_every_other() -> None:
        for i in range(0, 20, 2):
            with contextlib.suppress(InvalidTransition):  # lost the race: the job COMPLETED first
                p.cancel(backend, f"r{i}")

    t = threading.Thread(target=cancel_every_other)
    t.start()
    Controller(p, "s", backend).handle_batch(got)
    t.join()
    for i in range(20):
        job = backend.store.get(f"r{i}")
        assert job is not None and job.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
        events = [h.event for h in job.history]
        if "cancelled" in events:
            assert "commit" not in events[events.index("cancelled"):]


def test_cancel_and_retry_through_sqs_and_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    from orchestrator.backends.aws import aws_backend

    aws_test_env(monkeypatch)
    with mock_aws():
        backend = aws_backend("aws://?region=us-east-1&prefix=ctl-")
        calls: list[str] = []
        p = two_stage(calls)
        for st in p.stages.values():
            st.wait_s, st.retry_base_s, st.retry_max_s = 0, 0, 0
        p.setup(backend)
        p.submit(backend, job_id="gone", payload={}, queue="a")
        p.submit(backend, job_id="flaky-1", payload={}, queue="a")
        p.cancel(backend, "gone", reason="not needed")

        def run(stage: str) -> list[Outcome]:
            out: list[Outcome] = []
            st = p.get(stage)
            for _ in range(20):
                got = backend.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=30)
                if not got and backend.transport.depth(st.source).total == 0:
                    break
                out += Controller(p, stage, backend).handle_batch(got) if got else []
            return out

        assert sorted(run("first")) == sorted([Outcome.CANCELLED, Outcome.COMMITTED])
        assert run("second") == [Outcome.RETRIED, Outcome.DEAD_LETTERED]
        assert calls == ["first:flaky-1", "second:flaky-1", "second:flaky-1"]
        backend.store.update_fields("flaky-1", {"broken": False})
        assert p.retry(backend, "flaky-1").status == JobStatus.PENDING
        assert backend.transport.depth("b-dlq").total == 0
        assert run("second") == [Outcome.COMMITTED]
        done = backend.store.get("flaky-1")
        gone = backend.store.get("gone")
        assert done is not None and done.status == JobStatus.COMPLETED
        assert gone is not None and gone.status == JobStatus.CANCELLED


CANCEL_PIPELINE = """
import time
from orchestrator import Pipeline, Result, JobStatus

pipeline = Pipeline("cancelme")

@pipeline.stage("slow", source="slow", emit_to="after", visibility_timeout_s=3, wait_s=0.05)
def slow(ctx, msg):
    for _ in range(100):           # up to 10 s, looking whether the job was cancelled
        if ctx.cancelled:
            break
        time.sleep(0.1)
    return Result(status=JobStatus.RUNNING, fields={"finished": True}, emit=[{"n": 1}])
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_cancelling_a_job_while_its_handler_runs_in_another_process_commits_nothing(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import os
    import subprocess
    import sys
    import time

    from orchestrator.backends import open_backend

    url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else f"sqlite:///{tmp_path / 'c.db'}"
    (tmp_path / "cancelme.py").write_text(CANCEL_PIPELINE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    assert subprocess.run([sys.executable, "-m", "orchestrator", "submit", "cancelme:pipeline", "--queue", "slow",
                           "--job-id", "j1", "--backend", url], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "cancelme:pipeline", "--stage", "slow",
                               "--backend", url, "--log-level", "error"], env=env, cwd=tmp_path)
    backend = open_backend(url)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # the handler is running once the job is RUNNING
            job = backend.store.get("j1")
            if job is not None and job.status == JobStatus.RUNNING:
                break
            time.sleep(0.05)
        assert subprocess.run([sys.executable, "-m", "orchestrator", "cancel", "j1", "--backend", url],
                              env=env, cwd=tmp_path, capture_output=True).returncode == 0
        while time.time() < deadline and backend.transport.depth("slow").total:
            time.sleep(0.1)
        job = backend.store.get("j1")
        assert job is not None and job.status == JobStatus.CANCELLED
        assert "finished" not in job.fields and "commit" not in [h.event for h in job.history]
        assert backend.transport.depth("slow").total == 0 and backend.transport.depth("after").total == 0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        backend.close()
