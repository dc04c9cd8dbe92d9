"""Real worker processes on one SQLite file or one PostgreSQL schema, SIGKILLed at random
while jobs flow."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.backends import open_backend
from orchestrator.status import JobStatus

PIPELINE = textwrap.dedent(
    """
    import time
    from orchestrator import Pipeline, Result, JobStatus

    pipeline = Pipeline("chaos")

    @pipeline.stage("first", source="a", emit_to="b", visibility_timeout_s=2, max_receives=20, wait_s=0.05,
                    retry_base_s=0.1, retry_max_s=1)
    def first(ctx, msg):
        time.sleep(0.001)
        return Result(status=JobStatus.RUNNING, fields={"n": msg.payload["n"] + 1}, emit=[{"n": msg.payload["n"] + 1}])

    @pipeline.stage("second", source="b", visibility_timeout_s=2, max_receives=20, wait_s=0.05,
                    retry_base_s=0.1, retry_max_s=1)
    def second(ctx, msg):
        time.sleep(0.001)
        return Result(status=JobStatus.COMPLETED, fields={"m": msg.payload["n"] * 10})
    """
)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend URL the worker processes share: an SQLite file, or a PostgreSQL schema."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'chaos.db'}"


def spawn(tmp: Path, db: str, stage: str, *, until_idle: bool = False) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "orchestrator", "worker", "chaospipe:pipeline", "--backend", db,
           "--stage", stage, "--log-level", "error", "--wait", "0.05"]
    if until_idle:
        cmd.append("--until-idle")
    return subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkilled_workers_lose_nothing_and_commit_nothing_twice(tmp_path: Path, db_url: str) -> None:
    # Given 1,000 jobs submitted to a two-stage pipeline on one database
    (tmp_path / "chaospipe.py").write_text(PIPELINE)
    sys.path.insert(0, str(tmp_path))
    try:
        import chaospipe  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    db = db_url
    backend = open_backend(db)
    pipeline = chaospipe.pipeline
    pipeline.setup(backend)
    n_jobs = 1000
    for i in range(n_jobs):
        pipeline.submit(backend, job_id=f"job-{i:04d}", payload={"n": i}, queue="a")

    # When three workers (two on the first stage) are SIGKILLed at random and restarted
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "7")))
    stages = ["first", "first", "second"]
    procs = [spawn(tmp_path, db, s) for s in stages]
    kills = 0
    progress: list[int] = []  # completed jobs at each kill
    deadline = time.time() + 60
    while kills < 8 and time.time() < deadline:
        time.sleep(rng.uniform(0.1, 0.5))
        i = rng.randrange(len(procs))
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        kills += 1
        progress.append(len(backend.store.query(status=JobStatus.COMPLETED)))
        procs[i] = spawn(tmp_path, db, stages[i])
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # One stage after the other: a "second" finisher running beside "first" could see its
    # queue idle while "first" still waits out the leases of killed holders, and stop early.
    for s in ("first", "second"):
        finisher = spawn(tmp_path, db, s, until_idle=True)
        _, err = finisher.communicate(timeout=120)
        assert finisher.returncode == 0, err.decode()[-2000:]
    # Then every job completed, each step committed exactly once, and no queue holds anything
    jobs = backend.store.query()
    assert len(jobs) == n_jobs
    not_done = [j.job_id for j in jobs if j.status != JobStatus.COMPLETED]
    assert not not_done, f"{len(not_done)} jobs not completed: {not_done[:5]}"
    twice = [j.job_id for j in jobs if j.commits("first") != 1 or j.commits("second") != 1]
    assert not twice, f"steps committed more or less than once: {twice[:5]}"
    assert all(j.fields["m"] == (int(j.job_id[4:]) + 1) * 10 for j in jobs)
    for q in ("a", "b", "a-dlq", "b-dlq"):
        assert backend.transport.depth(q).total == 0, q
    assert kills >= 8
    print("completed jobs at each kill:", progress)
    assert progress[0] < n_jobs, "the first kill came after the work was done"


@pytest.mark.parametrize("point", ["after_begin", "after_handle", "after_commit", "after_ack"])
def test_a_worker_process_killed_at_a_named_crash_point_is_finished_by_the_next(
        tmp_path: Path, point: str, db_url: str) -> None:
    # Given a worker process told (ORCHESTRATOR_FAULTS) to die at a crash point on its first attempt
    (tmp_path / "chaospipe.py").write_text(PIPELINE)
    db = db_url
    backend = open_backend(db)
    sys.path.insert(0, str(tmp_path))
    try:
        import chaospipe  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    chaospipe.pipeline.setup(backend)
    chaospipe.pipeline.submit(backend, job_id="j", payload={"n": 1}, queue="a")
    faults = f'[{{"point": "{point}", "stage": "first", "attempt": 1}}]'

    def cmd(stage: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator", "worker", "chaospipe:pipeline", "--backend", db,
                "--stage", stage, "--log-level", "error", "--wait", "0.05", "--until-idle"]

    dying = subprocess.run(cmd("first"), cwd=tmp_path, env=dict(os.environ, ORCHESTRATOR_FAULTS=faults), timeout=60)
    # When it dies (as SIGKILL would) and a healthy worker runs after the lease lapses
    assert dying.returncode == 137
    for stage in ("first", "second"):
        assert subprocess.run(cmd(stage), cwd=tmp_path, timeout=60).returncode == 0
    # Then the job is completed with each step committed exactly once
    job = backend.store.get("j")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields["m"] == 20
    assert job.commits("first") == 1 and job.commits("second") == 1
    assert job.steps["first"].attempt == (1 if point == "after_ack" else 2)
