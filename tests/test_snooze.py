"""Snooze: "not yet, look again later", without using an attempt, on every backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator import Controller, JobStatus, Pipeline, Result, Snooze, Worker
from orchestrator.backends import Backend, open_backend
from orchestrator.clock import SimClock
from orchestrator.controllers.controller import Outcome


def waiting_pipeline(ready_after: float, *, max_receives: int = 2, max_snooze_s: float | None = 3600.0) -> Pipeline:
    """One stage whose handler snoozes 60 s at a time until the clock passes ``ready_after``."""
    p = Pipeline("w")

    @p.stage("restore", source="restores", max_receives=max_receives, visibility_timeout_s=30,
             max_snooze_s=max_snooze_s)
    def restore(ctx, msg):  # type: ignore[no-untyped-def]
        if ctx.clock.now() < ready_after:
            return Snooze(60, reason="archive still restoring")
        return Result(status=JobStatus.COMPLETED, fields={"restored_at_attempt": ctx.attempt})

    return p


def step(backend: Backend, p: Pipeline) -> list[Outcome]:
    st = p.get("restore")
    got = backend.transport.receive(st.source, max_messages=10, wait_s=0, visibility_s=st.visibility_timeout_s)
    return Controller(p, st, backend, seed=1).handle_batch(got) if got else []


def test_a_snoozed_message_comes_back_after_its_delay_with_no_attempt_used(backend: Backend) -> None:
    clock = backend.clock
    assert isinstance(clock, SimClock)
    # Given a stage allowing only 2 receives, and a restore that needs 5 snoozes
    p = waiting_pipeline(ready_after=clock.now() + 290, max_receives=2)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="restores")
    outcomes: list[Outcome] = []
    for _ in range(5):
        outcomes += step(backend, p)
        # Then it is not back before its 60 s
        clock.advance(59)
        assert step(backend, p) == []
        assert backend.transport.depth("restores").delayed == 1
        clock.advance(1)
    outcomes += step(backend, p)
    # When it finally runs, it is on its first attempt still, and the job is COMPLETED
    assert outcomes == [Outcome.SNOOZED] * 5 + [Outcome.COMMITTED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["restored_at_attempt"] == 1
    snoozes = [h for h in job.history if h.event == "snoozed"]
    assert len(snoozes) == 5 and all("archive still restoring" in (h.reason or "") for h in snoozes)
    assert all(h.from_status == h.to_status == JobStatus.RUNNING for h in snoozes)
    assert backend.transport.depth("restores").total == 0


def test_a_snooze_past_max_snooze_s_fails_the_job_with_the_reason(backend: Backend) -> None:
    clock = backend.clock
    assert isinstance(clock, SimClock)
    p = waiting_pipeline(ready_after=clock.now() + 10_000, max_snooze_s=150)
    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="restores")
    outcomes: list[Outcome] = []
    for _ in range(4):
        outcomes += step(backend, p)
        clock.advance(60)
    # 0 s and 60 s waited: snoozed; at 120 s another 60 s would pass 150 s: FAILED
    assert outcomes == [Outcome.SNOOZED, Outcome.SNOOZED, Outcome.FAILED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.FAILED
    assert "gave up waiting after 120s (max_snooze_s 150s): archive still restoring" in (job.history[-1].reason or "")
    assert backend.transport.depth("restores").total == 0


def test_a_long_snooze_past_the_queues_delay_cap_is_kept(backend: Backend) -> None:
    clock = backend.clock
    assert isinstance(clock, SimClock)
    p = Pipeline("w")
    seen: list[float] = []

    @p.stage("restore", source="restores", max_snooze_s=None)
    def restore(ctx, msg):  # type: ignore[no-untyped-def]
        seen.append(ctx.clock.now())
        return Snooze(6 * 3600) if len(seen) == 1 else Result(status=JobStatus.COMPLETED)

    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="restores")
    start = clock.now()
    assert step(backend, p) == [Outcome.SNOOZED]
    clock.advance(6 * 3600 - 1)
    assert step(backend, p) == []
    clock.advance(1)
    assert step(backend, p) == [Outcome.COMMITTED]
    assert seen == [start, start + 6 * 3600]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_delayed_job_runs_within_a_second_of_its_time_under_a_real_worker(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else f"sqlite:///{tmp_path / 'd.db'}"
    backend = open_backend(url)
    started: list[float] = []
    p = Pipeline("delayed")

    @p.stage("run", source="runs", wait_s=1.0)
    def run(ctx, msg):  # type: ignore[no-untyped-def]
        started.append(time.time())
        return Result(status=JobStatus.COMPLETED)

    try:
        p.setup(backend)
        worker = Worker(p, "run", backend)
        worker.start()
        due = time.time() + 2.5
        p.submit(backend, job_id="j1", payload={}, queue="runs", at=due)
        deadline = time.time() + 10
        while not started and time.time() < deadline:
            time.sleep(0.05)
        worker.stop()
        assert started and due <= started[0] <= due + 1.0, (started, due)
    finally:
        backend.close()


def test_a_post_completion_stage_that_gave_up_can_be_redriven_and_the_job_stays_completed(backend: Backend) -> None:
    from helpers import drain

    from orchestrator.ops.dlq import redrive

    # Given a job COMPLETED by its first stage, whose notify step was dead-lettered
    down = [True]
    p = Pipeline("post")
    p.stage("work", source="work", emit_to="notify")(
        lambda ctx, msg: Result(status=JobStatus.COMPLETED, emit=[{"n": 1}]))

    @p.stage("notify", source="notify", max_receives=1)
    def notify(ctx, msg):  # type: ignore[no-untyped-def]
        if down[0]:
            raise RuntimeError("mail server down")
        return Result(fields={"notified": True})

    p.setup(backend)
    p.submit(backend, job_id="j1", payload={}, queue="work")
    drain(backend, p, "work")
    assert drain(backend, p, "notify") == [Outcome.DEAD_LETTERED]
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.steps["notify"].state == "failed"
    # When the mail server is back and the dead letter is redriven
    down[0] = False
    done = redrive(backend, p, "notify-dlq")
    assert len(done.redriven) == 1 and not done.refused
    assert drain(backend, p, "notify") == [Outcome.COMMITTED]
    # Then the step ran again, and the job never left COMPLETED
    job = backend.store.get("j1")
    assert job is not None and job.status == JobStatus.COMPLETED and job.fields["notified"] is True
    assert [h.to_status for h in job.history if h.event == "reset"] == [JobStatus.COMPLETED]
    assert all(h.to_status == JobStatus.COMPLETED for h in job.history[job.history.index(
        next(h for h in job.history if h.event == "commit")):])


def test_the_sweeper_leaves_a_delayed_job_alone_until_its_time_has_passed(backend: Backend) -> None:
    from orchestrator.ops.sweep import sweep

    clock = backend.clock
    assert isinstance(clock, SimClock)
    p = Pipeline("sw")
    p.stage("run", source="runs")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.setup(backend)
    p.submit(backend, job_id="later", payload={}, queue="runs", delay_s=3600)
    # Given a job an hour out, long past the sweeper's age threshold
    clock.advance(1800)
    # Then its waiting message is not taken for lost (a re-send would run it early)
    assert sweep(p, backend, older_than_s=300).actions == []
    assert backend.transport.depth("runs").delayed == 1
    assert backend.transport.receive("runs", max_messages=10, wait_s=0, visibility_s=30) == []
    # and once it is overdue and gone, it is re-sent
    clock.advance(1800 + 301)
    backend.transport.purge("runs")
    assert [a for a in sweep(p, backend, older_than_s=300).actions if "re-sent its first message" in a]


def test_a_database_from_before_priorities_is_migrated_in_place_and_keeps_its_messages(tmp_path: Path) -> None:
    import sqlite3

    from orchestrator.backends import sqlite_backend
    from orchestrator.base import Outgoing

    # Given a database at schema 1 (no priorities) holding a queued message
    path = tmp_path / "old.db"
    sqlite_backend(path).close()
    c = sqlite3.connect(path)
    c.executescript("""
        DROP INDEX messages_ready_p; DROP INDEX jobs_created;
        ALTER TABLE messages DROP COLUMN priority;
        ALTER TABLE queues DROP COLUMN priorities;
        CREATE INDEX messages_ready ON messages(queue, visible_at, seq);
        UPDATE schema_version SET version = 1;
        INSERT INTO queues(name, visibility_s, max_receives) VALUES ('q', 30, 5);
        INSERT INTO messages(queue, message_id, body, visible_at, enqueued_at) VALUES ('q', 'old', 'x', 0, 0);
    """)
    c.commit()
    c.close()
    # When this version opens it
    b = sqlite_backend(path)
    try:
        # Then the old message is there at priority 0, and priorities work from now on
        b.transport.send("q", Outgoing(body="urgent", message_id="new", priority=9))
        got = b.transport.receive("q", max_messages=10, wait_s=0, visibility_s=30)
        assert [d.message_id for d in got] == ["new", "old"]
        version = b.transport.db.read("SELECT MAX(version) FROM schema_version")[0][0]  # type: ignore[attr-defined]
        assert version == 2
        # and the index a page of the latest jobs reads is there (added with no version bump)
        assert b.transport.db.read("SELECT name FROM sqlite_master WHERE name='jobs_created'")  # type: ignore[attr-defined]
    finally:
        b.close()


def test_a_postgres_schema_from_before_priorities_is_migrated_in_place(pg_url: str) -> None:
    import psycopg

    from orchestrator.backends import open_backend
    from orchestrator.base import Outgoing

    open_backend(pg_url).close()
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f"DROP INDEX {schema}.messages_ready_p")
        conn.execute(f"DROP INDEX {schema}.jobs_created")
        conn.execute(f"ALTER TABLE {schema}.messages DROP COLUMN priority")
        conn.execute(f"ALTER TABLE {schema}.queues DROP COLUMN priorities")
        conn.execute(f"CREATE INDEX messages_ready ON {schema}.messages(queue, visible_at, seq)")
        conn.execute(f"UPDATE {schema}.schema_version SET version = 1")
        conn.execute(f"INSERT INTO {schema}.messages(queue, message_id, body, visible_at, enqueued_at) "
                     "VALUES ('q', 'old', 'x', 0, 0)")
    b = open_backend(pg_url)
    try:
        b.transport.send("q", Outgoing(body="urgent", message_id="new", priority=9))
        got = b.transport.receive("q", max_messages=10, wait_s=0, visibility_s=30)
        assert sorted(d.message_id for d in got) == ["new", "old"] and got[0].message_id == "new"
        assert b.transport.db.read("SELECT indexname FROM pg_indexes WHERE schemaname=? AND indexname='jobs_created'",  # type: ignore[attr-defined]
                                   (schema,))
    finally:
        b.close()


def test_a_file_from_before_the_version_table_is_brought_to_this_schema(tmp_path: Path) -> None:
    import sqlite3

    from orchestrator.backends import sqlite_backend

    # Given a file with the first version's tables (no priorities) and no version table
    path = tmp_path / "legacy.db"
    sqlite_backend(path).close()
    c = sqlite3.connect(path)
    c.executescript("""
        DROP TABLE schema_version; DROP INDEX messages_ready_p;
        ALTER TABLE messages DROP COLUMN priority; ALTER TABLE queues DROP COLUMN priorities;
        CREATE INDEX messages_ready ON messages(queue, visible_at, seq);
        INSERT INTO queues(name, visibility_s, max_receives) VALUES ('q', 30, 5);
        INSERT INTO messages(queue, message_id, body, visible_at, enqueued_at) VALUES ('q', 'old', 'x', 0, 0);
    """)
    c.close()
    # When this version opens it
    b = sqlite_backend(path)
    try:
        # Then its message is delivered and the file is at this version's schema
        got = b.transport.receive("q", max_messages=10, wait_s=0, visibility_s=30)
        assert [d.message_id for d in got] == ["old"] and got[0].receive_count == 1
        version = b.transport.db.read("SELECT MAX(version) FROM schema_version")[0][0]  # type: ignore[attr-defined]
        assert version == 2
    finally:
        b.close()
