"""The embedded default's background checkpointer: the log is copied back into the database by a
thread of each process, not by the worker commit that happens to cross a size limit."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from orchestrator.backends import sqlite_backend, sqlite_db
from orchestrator.backends.sqlite_db import CHECKPOINT_INTERVAL_S, WAL_AUTOCHECKPOINT_PAGES


def _jobs_in_main_file(path: Path) -> int:
    """Jobs in the database file itself, ignoring the write-ahead log (``immutable``)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    except sqlite3.OperationalError:  # not even the tables are there yet
        return 0
    finally:
        conn.close()


def _checkpointers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "sqlite-checkpointer"}


def _wait_for(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_committed_jobs_reach_the_database_file_without_a_commit_crossing_the_log_limit(tmp_path: Path) -> None:
    # Given a few jobs written: far fewer log pages than a connection's own checkpoint limit
    path = tmp_path / "o.db"
    b = sqlite_backend(path)
    for i in range(20):
        b.store.create(f"j{i}")
    assert WAL_AUTOCHECKPOINT_PAGES > 20 * 2
    # When nothing else happens for a few checkpoint intervals
    # Then the checkpointer thread has copied them from the log into the database file
    assert _wait_for(lambda: _jobs_in_main_file(path) == 20, timeout=20 * CHECKPOINT_INTERVAL_S)
    b.transport.db.close()  # type: ignore[attr-defined]


def test_the_checkpointer_ends_with_its_database_and_never_recreates_a_deleted_file(tmp_path: Path) -> None:
    before = _checkpointers()
    # Given two databases in use, each with its checkpointer
    paths = [tmp_path / "a.db", tmp_path / "b.db"]
    backends = [sqlite_backend(p) for p in paths]
    for b in backends:
        b.store.create("j")
    ours = _checkpointers() - before
    assert len(ours) == 2
    # When one is closed and the other's file deleted under it
    backends[0].transport.db.close()  # type: ignore[attr-defined]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{paths[1]}{suffix}").unlink(missing_ok=True)
    # Then both threads end, and the deleted file stays deleted
    assert _wait_for(lambda: not any(t.is_alive() for t in ours), timeout=20 * CHECKPOINT_INTERVAL_S)
    time.sleep(2 * CHECKPOINT_INTERVAL_S)
    assert not paths[1].exists()


def test_a_fork_waits_until_the_checkpointer_is_out_of_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A child forked while the checkpointer held one of SQLite's own mutexes would inherit it
    # held: its first connect would wait forever.
    # Given a checkpointer caught inside SQLite (its checkpoint held open)
    inside, release = threading.Event(), threading.Event()
    real = sqlite_db._checkpoint

    def held(conn: sqlite3.Connection | None, path: str) -> sqlite3.Connection:
        inside.set()
        release.wait(10)
        return real(conn, path)

    monkeypatch.setattr(sqlite_db, "_checkpoint", held)
    b = sqlite_backend(tmp_path / "f.db")
    b.store.create("j")
    assert inside.wait(20 * CHECKPOINT_INTERVAL_S)
    # When the process forks meanwhile
    children: list[int] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        children.append(pid)

    forker = threading.Thread(target=fork)
    forker.start()
    # Then the fork waits for the checkpoint to end, and goes ahead once it has
    forker.join(0.5)
    assert forker.is_alive() and not children
    release.set()
    forker.join(10)
    assert len(children) == 1
    assert os.waitpid(children[0], 0)[1] == 0
    b.close()


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_a_new_file_gets_the_larger_page_and_a_file_made_before_keeps_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.backends import sqlite_db
    from orchestrator.base import Outgoing, QueueSpec

    # Given a file an earlier version made, with SQLite's default 4 KB pages, a message waiting
    old = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(sqlite_db, "PAGE_SIZE", 4096)
        b = sqlite_backend(old)
        b.transport.ensure_queue(QueueSpec("q"))
        b.transport.send("q", Outgoing(body="before", message_id="m0"))
        b.close()
    # When this code opens it, and creates a new file beside it
    for path in (old, tmp_path / "new.db"):
        b = sqlite_backend(path)
        b.transport.ensure_queue(QueueSpec("q"))
        b.transport.send("q", Outgoing(body="x" * 20_000, message_id="m1"))  # a body over a page
        got = b.transport.receive("q", max_messages=10, wait_s=0, visibility_s=30)
        # Then both work, what was there before and bodies larger than a page included
        assert [d.body for d in got] == (["before"] if path == old else []) + ["x" * 20_000]
        b.close()
    # And the old file keeps its pages (WAL fixes them), the new one has the larger ones
    assert (_page_size(old), _page_size(tmp_path / "new.db")) == (4096, sqlite_db.PAGE_SIZE)
    assert sqlite_db.PAGE_SIZE > 4096
