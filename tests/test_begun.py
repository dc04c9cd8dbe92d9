"""A begin on SQLite and PostgreSQL writes its arguments, not the job's document; whoever reads
the row applies them again. These tests hold that a reader can never tell: the SQL stores,
fed any sequence of writes, answer and store exactly what the in-memory store does."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.backends import Backend, memory_backend, postgres_backend, sqlite_backend
from orchestrator.base import StatusStore
from orchestrator.clock import SimClock
from orchestrator.errors import StoreError
from orchestrator.status import BeginItem, CommitItem, JobStatus
from orchestrator.tables import SCHEMA_VERSION

CLOCK = SimClock()


@pytest.fixture(params=["sqlite", "postgres"])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        b = postgres_backend(request.getfixturevalue("pg_url"), clock=CLOCK)
    else:
        b = sqlite_backend(tmp_path / "o.db", clock=CLOCK)
    yield b
    b.close()


def _row(b: Backend, job_id: str) -> tuple[str, str | None]:
    db: Any = b.store.db  # type: ignore[attr-defined]
    doc, begun = db.read("SELECT doc, begun FROM jobs WHERE job_id=?", (job_id,))[0]
    return doc, begun


def test_a_begin_leaves_the_document_as_it_was_and_a_commit_folds_the_begins_in(sql_backend: Backend) -> None:
    store = sql_backend.store
    # Given a job with two steps begun (two stages at once), neither committed
    store.create_doc("j")
    written, _ = _row(sql_backend, "j")
    store.begin_docs([BeginItem("j", "s", "m", "c1", 1)])
    [second] = store.begin_docs([BeginItem("j", "t", "m2", "c2", 1)])
    # Then the row's document is the one the create wrote, and the two begins are two lines
    doc, begun = _row(sql_backend, "j")
    assert doc == written and begun is not None and len(begun.strip().split("\n")) == 2
    # and a reader sees what the second begin returned: RUNNING, both steps held
    read = store.get_docs(["j"])["j"]
    assert read == second and read["status"] == "RUNNING"
    assert (read["steps"]["s"]["claim"], read["steps"]["t"]["claim"]) == ("c1", "c2")
    # When one holder commits
    [done] = store.commit_docs([CommitItem("j", "t", "m2", "c2", JobStatus.RUNNING)])
    # Then the document holds everything and nothing is left to apply
    doc, begun = _row(sql_backend, "j")
    assert begun is None and doc != written
    assert store.get_docs(["j"])["j"] == done and done["steps"]["s"]["claim"] == "c1"


def test_redeliveries_write_the_whole_document_so_a_row_does_not_grow_with_them(sql_backend: Backend) -> None:
    store = sql_backend.store
    store.create_doc("j")
    # Given a message delivered, then redelivered again and again (its handler never commits)
    store.begin_docs([BeginItem("j", "s", "m", "c1", 1, input_body="x" * 1000)])
    for attempt in range(2, 40):
        store.begin_docs([BeginItem("j", "s", "m", f"c{attempt}", attempt, input_body="x" * 1000)])
    # Then the row holds one document, with the input once, and no lines of begins
    doc, begun = _row(sql_backend, "j")
    assert begun is None and doc.count("x" * 1000) == 1
    # and a reader sees the last holder
    step = store.get_docs(["j"])["j"]["steps"]["s"]
    assert step["claim"] == "c39" and step["attempt"] == 39


def _apply(store: StatusStore, job_id: str, op: tuple[Any, ...], known: dict[str, Any] | None) -> Any:
    """The write's answer: the record written, or the name of the error it was refused with."""
    got = _write(store, job_id, op, known)
    return type(got).__name__ if isinstance(got, StoreError) else got


def _write(store: StatusStore, job_id: str, op: tuple[Any, ...], known: dict[str, Any] | None) -> Any:
    kind = op[0]
    try:
        if kind == "begin":
            _, stage, msg, claim, attempt = op
            return store.begin_docs([BeginItem(job_id, stage, msg, claim, attempt, input_body=f"in-{msg}")],
                                    known=known)[0]
        if kind == "commit":
            _, stage, msg, claim, status = op
            return store.commit_docs([CommitItem(job_id, stage, msg, claim, status, {"by": claim})], known=known)[0]
        if kind == "fields":
            return store.update_fields(job_id, op[1]).model_dump()
        if kind == "snooze":
            _, stage, msg, claim = op
            return store.snooze(job_id, stage=stage, message_id=msg, claim=claim, reason="later",
                                until=CLOCK.now() + 60).model_dump()
        _, stage, msg, claim = op
        return store.fail(job_id, stage=stage, message_id=msg, claim=claim, reason="bad", dead_letter=False).model_dump()
    except StoreError as exc:
        return exc


stages, messages, claims = st.sampled_from(["a", "b"]), st.sampled_from(["m1", "m2"]), st.sampled_from(["c1", "c2", "c3"])
statuses = st.sampled_from([None, JobStatus.RUNNING, JobStatus.COMPLETED])
ops = st.one_of(
    st.tuples(st.just("begin"), stages, messages, claims, st.integers(1, 4)),
    st.tuples(st.just("commit"), stages, messages, st.one_of(st.none(), claims), statuses),
    st.tuples(st.just("fields"), st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 9), max_size=2)),
    st.tuples(st.just("snooze"), stages, messages, claims),
    st.tuples(st.just("fail"), stages, messages, claims),
)
# which record the caller passes as known: none (the store reads), the last one, or an older one
knowns = st.sampled_from(["none", "last", "older"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(ops, knowns, st.floats(0, 5)), min_size=1, max_size=12))
def test_any_sequence_of_writes_reads_back_as_the_memory_store_has_it(
        sql_backend: Backend, steps: list[tuple[tuple[Any, ...], str, float]]) -> None:
    model = memory_backend(CLOCK).store
    store = sql_backend.store
    job = f"j-{uuid.uuid4().hex[:8]}"
    seen: list[dict[str, Any]] = []
    for s in (model, store):
        s.create_doc(job, fields={"n": 1})
    seen.append(store.get_docs([job])[job])
    for op, which, dt in steps:
        CLOCK.advance(dt)
        known = None if which == "none" or not seen else {job: seen[-1] if which == "last" else seen[0]}
        want, got = _apply(model, job, op, known), _apply(store, job, op, known)
        # the same answer, the same record written ...
        assert type(got) is type(want) and (isinstance(got, str) or _same(got, want)), op
        # ... and what a reader of the row sees is what the writer was told it wrote
        read = store.get_docs([job])[job]
        assert _same(read, model.get_docs([job])[job])
        if isinstance(got, dict) and "steps" in got and "version" in got:
            assert read["version"] == got["version"]
        seen.append(read)
    # the typed view and the queries agree too
    assert store.get(job) == model.get(job)
    status = model.get(job).status  # type: ignore[union-attr]
    assert job in {r.job_id for r in store.query(status=status)}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "version"} == {k: v for k, v in b.items() if k != "version"}


def test_a_database_from_before_the_begun_column_is_migrated_and_its_jobs_read_on(tmp_path: Path) -> None:
    # Given a database at schema 2 holding a running job
    path = tmp_path / "old.db"
    b = sqlite_backend(path, clock=CLOCK)
    b.store.create_doc("j")
    b.store.commit_docs([CommitItem("j", "s", "m", None, JobStatus.RUNNING, {"old": True})])
    before = b.store.get_docs(["j"])["j"]
    b.close()
    c = sqlite3.connect(path)
    c.executescript("ALTER TABLE jobs DROP COLUMN begun; UPDATE schema_version SET version = 2;")
    c.close()
    # When this version opens it
    b = sqlite_backend(path, clock=CLOCK)
    try:
        # Then the job reads as it was, and begins and commits go on
        assert b.store.get_docs(["j"])["j"] == before
        b.store.begin_docs([BeginItem("j", "t", "m2", "c", 1)])
        [done] = b.store.commit_docs([CommitItem("j", "t", "m2", "c", JobStatus.COMPLETED)])
        assert done["status"] == "COMPLETED" and b.store.get_docs(["j"])["j"] == done
        assert b.store.db.read("SELECT MAX(version) FROM schema_version")[0][0] == SCHEMA_VERSION  # type: ignore[attr-defined]
    finally:
        b.close()


def test_a_file_from_before_the_version_table_is_brought_to_this_schema(tmp_path: Path) -> None:
    # Given a file with the first version's tables and no version table
    path = tmp_path / "legacy.db"
    sqlite_backend(path).close()
    c = sqlite3.connect(path)
    c.executescript("""
        DROP TABLE schema_version; DROP INDEX messages_ready_p;
        ALTER TABLE messages DROP COLUMN priority; ALTER TABLE queues DROP COLUMN priorities;
        ALTER TABLE jobs DROP COLUMN begun;
        INSERT INTO queues(name, visibility_s, max_receives) VALUES ('q', 30, 5);
        INSERT INTO messages(queue, message_id, body, visible_at, enqueued_at) VALUES ('q', 'old', 'x', 0, 0);
    """)
    c.close()
    # When this version opens it
    b = sqlite_backend(path)
    try:
        # Then its message is delivered and jobs can be begun
        assert [d.message_id for d in b.transport.receive("q", max_messages=10, wait_s=0, visibility_s=30)] == ["old"]
        b.store.create_doc("j")
        [begun] = b.store.begin_docs([BeginItem("j", "s", "m", "c", 1)])
        assert b.store.get_docs(["j"])["j"] == begun
        assert b.store.db.read("SELECT MAX(version) FROM schema_version")[0][0] == SCHEMA_VERSION  # type: ignore[attr-defined]
    finally:
        b.close()


def test_a_postgres_schema_from_before_the_begun_column_is_migrated(pg_url: str) -> None:
    import psycopg

    b = postgres_backend(pg_url, clock=CLOCK)
    b.store.create_doc("j")
    b.close()
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.jobs DROP COLUMN begun")
        conn.execute(f"UPDATE {schema}.schema_version SET version = 2")
    b = postgres_backend(pg_url, clock=CLOCK)
    try:
        [begun] = b.store.begin_docs([BeginItem("j", "s", "m", "c", 1)])
        assert b.store.get_docs(["j"])["j"] == begun and begun["status"] == "RUNNING"
    finally:
        b.close()
