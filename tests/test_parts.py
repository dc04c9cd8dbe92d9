"""Parts and join (fan-out / fan-in) on every backend: each part committed once, the join run
and committed once per job, with the parts' results in order."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import aws_test_env, drain

from orchestrator import JobStatus, PermanentError, Pipeline, Result
from orchestrator.backends import Backend
from orchestrator.controllers.controller import Outcome


def fan(n: int, *, bad: set[int] | None = None, allow_failed: bool = False, runs: list[str] | None = None
        ) -> Pipeline:
    p = Pipeline("fan")
    runs = runs if runs is not None else []

    @p.stage("split", source="split", emit_to="part")
    def split(ctx, msg):  # type: ignore[no-untyped-def]
        return Result(status=JobStatus.RUNNING, parts=[{"n": i} for i in range(n)])

    @p.stage("annotate_part", source="part", max_receives=2)
    def annotate_part(ctx, msg):  # type: ignore[no-untyped-def]
        runs.append(f"part{ctx.part}")
        if msg.payload["n"] in (bad or set()):
            raise PermanentError(f"part {msg.payload['n']} is unreadable")
        return Result(fields={"square": msg.payload["n"] ** 2})

    @p.join("merge", parts_of="annotate_part", allow_failed=allow_failed)
    def merge(ctx, msg):  # type: ignore[no-untyped-def]
        runs.append("merge")
        squares = [p["square"] if p else None for p in ctx.parts]
        failures = {str(i): why for i, why in ctx.part_failures.items()}
        return Result(status=JobStatus.COMPLETED, fields={"squares": squares, "failures": failures})

    return p


def test_the_join_runs_once_when_every_part_has_committed_with_their_results_in_order(backend: Backend) -> None:
    runs: list[str] = []
    p = fan(6, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    assert backend.transport.depth("part").total == 6
    assert drain(backend, p, "merge") == []  # nothing to join yet
    assert drain(backend, p, "annotate_part") == [Outcome.COMMITTED] * 6
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["squares"] == [0, 1, 4, 9, 16, 25]
    assert runs.count("merge") == 1 and sorted(r for r in runs if r != "merge") == sorted(f"part{i}" for i in range(6))
    assert all(job.commits(f"annotate_part#{i}") == 1 for i in range(6)) and job.commits("merge") == 1
    assert "square" not in job.fields  # a part's fields are its result, not the job's


def test_a_part_delivered_twice_is_committed_once_and_the_join_still_runs_once(backend: Backend) -> None:
    from orchestrator.base import Outgoing

    runs: list[str] = []
    p = fan(3, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    for d in backend.transport.peek("part", 10):  # every part twice (a duplicate delivery)
        backend.transport.send("part", Outgoing(body=d.body, message_id=f"{d.message_id}-copy"))
    outcomes = drain(backend, p, "annotate_part")
    assert sorted(outcomes) == sorted([Outcome.COMMITTED] * 3 + [Outcome.DUPLICATE] * 3)
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.commits("merge") == 1 and runs.count("merge") == 1


def test_a_failed_part_fails_the_job_with_its_reason_and_the_join_never_runs(backend: Backend) -> None:
    runs: list[str] = []
    p = fan(4, bad={2}, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    drain(backend, p, "annotate_part")
    assert drain(backend, p, "merge") == []
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.FAILED
    assert "part 2 is unreadable" in (job.history[-1].reason or "") or any(
        "part 2 is unreadable" in (h.reason or "") for h in job.history)
    assert "merge" not in runs


def test_a_join_that_allows_failed_parts_gets_them(backend: Backend) -> None:
    p = fan(4, bad={1, 3}, allow_failed=True)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    drain(backend, p, "annotate_part")
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["squares"] == [0, None, 4, None]
    assert job.fields["failures"] == {"1": "part 1 is unreadable", "3": "part 3 is unreadable"}


JOINPIPE = """
import os
from orchestrator import Pipeline, Result, JobStatus

pipeline = Pipeline("joinproc")

@pipeline.stage("split", source="split", emit_to="parts", wait_s=0.05, visibility_timeout_s=2)
def split(ctx, msg):
    return Result(status=JobStatus.RUNNING, parts=[{"i": i} for i in range(msg.payload["parts"])])

@pipeline.stage("part", source="parts", wait_s=0.05, visibility_timeout_s=2, batch_size=1)
def part(ctx, msg):
    return Result(fields={"v": msg.payload["i"] + 1})

@pipeline.join("merge", parts_of="part", wait_s=0.05, visibility_timeout_s=2)
def merge(ctx, msg):
    with open(os.environ["JOIN_LOG"], "a") as log:   # every run of the join's handler
        log.write(msg.job_id + "\\n")
    return Result(status=JobStatus.COMPLETED, fields={"total": sum(p["v"] for p in ctx.parts)})
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize(("stage", "point"), [("part", "after_handle"), ("part", "after_commit"),
                                              ("part", "after_emit"), ("part", "after_ack"),
                                              ("merge", "after_begin"), ("merge", "after_commit")])
def test_a_worker_killed_at_a_crash_point_around_a_join_leaves_the_join_run_once(
        kind: str, stage: str, point: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import os
    import subprocess
    import sys

    from orchestrator.backends import open_backend

    # Given a job split into one part (so the part that crashes is the last: its commit sends the join)
    url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else f"sqlite:///{tmp_path / 'j.db'}"
    (tmp_path / "joinproc.py").write_text(JOINPIPE)
    log = tmp_path / "joins.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]), JOIN_LOG=str(log))

    def worker(name: str, faults: str | None = None) -> int:
        e = dict(env, ORCHESTRATOR_FAULTS=faults) if faults else env
        return subprocess.run([sys.executable, "-m", "orchestrator", "worker", "joinproc:pipeline", "--backend", url,
                               "--stage", name, "--log-level", "error", "--wait", "0.05", "--until-idle"],
                              cwd=tmp_path, env=e, timeout=120).returncode

    assert subprocess.run([sys.executable, "-m", "orchestrator", "submit", "joinproc:pipeline", "--queue", "split",
                           "--job-id", "j", "--payload", '{"parts": 1}', "--backend", url], cwd=tmp_path, env=env,
                          capture_output=True).returncode == 0
    assert worker("split") == 0
    # When a worker is killed at the crash point (on its first attempt), then healthy workers run
    faults = f'[{{"point": "{point}", "stage": "{stage}", "attempt": 1}}]'
    if stage == "merge":
        assert worker("part") == 0
    assert worker(stage, faults) == 137
    for name in ("part", "merge") if stage == "part" else ("merge",):
        assert worker(name) == 0
    # Then the join was committed once, and its handler ran once (twice only when it was the one
    # killed before its commit took)
    backend = open_backend(url)
    try:
        job = backend.store.get("j")
        assert job is not None and job.status == JobStatus.COMPLETED and job.fields["total"] == 1
        assert job.commits("part#0") == 1 and job.commits("merge") == 1
        # (killed at after_commit, inside the one transaction of commit, emit and ack: the commit
        # is rolled back, so the next worker runs the handler again and commits)
        runs = log.read_text().split()
        assert len(runs) == (2 if (stage, point) == ("merge", "after_commit") else 1), runs
    finally:
        backend.close()


def test_a_join_of_ten_parts_through_sqs_and_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    from orchestrator import Controller
    from orchestrator.backends.aws import aws_backend

    aws_test_env(monkeypatch)
    with mock_aws():
        backend = aws_backend("aws://?region=us-east-1&prefix=join-")
        runs: list[str] = []
        p = fan(10, runs=runs)
        for st in p.stages.values():
            st.wait_s = 0
        p.setup(backend)
        p.submit(backend, job_id="j1", payload={}, queue="split")

        def run(stage: str) -> list[Outcome]:
            st, out = p.get(stage), []
            while got := backend.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=30):
                out += Controller(p, stage, backend).handle_batch(got)
            return out

        assert run("split") == [Outcome.COMMITTED]
        assert run("annotate_part") == [Outcome.COMMITTED] * 10
        assert run("merge") == [Outcome.COMMITTED]
        job = backend.store.get("j1")
        assert job is not None and job.status == JobStatus.COMPLETED
        assert job.fields["squares"] == [i * i for i in range(10)] and runs.count("merge") == 1


def test_a_job_failed_by_one_part_is_retried_and_its_dropped_sibling_parts_run_too(backend: Backend) -> None:
    # Given a job whose part 1 failed: the job FAILED, and part 2, behind it, was dropped unrun
    broken = {1}
    runs: list[str] = []
    p = fan(3, bad=broken, runs=runs)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="split")
    drain(backend, p, "split")
    drain(backend, p, "annotate_part")
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.FAILED
    unrun = [i for i in range(3) if f"part{i}" not in runs]
    # When the part is fixed and the job retried
    broken.clear()
    assert p.retry(backend, "j1").status == JobStatus.PENDING
    drain(backend, p, "annotate_part")
    assert drain(backend, p, "merge") == [Outcome.COMMITTED]
    # Then every part committed once, the dropped ones included, and the join ran once
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields["squares"] == [0, 1, 4]
    assert all(job.commits(f"annotate_part#{i}") == 1 for i in range(3)) and runs.count("merge") == 1
    assert all(f"part{i}" in runs for i in unrun)
