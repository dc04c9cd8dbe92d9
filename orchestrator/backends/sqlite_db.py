"""One SQLite file shared by the embedded queue, topic and status store.

Each thread (and each process, after a fork) gets its own connection. Writes run in
``BEGIN IMMEDIATE`` transactions through ``run``; a ``run`` inside another ``run`` on the same
thread joins the outer transaction, which is how commit + emit + ack become one atomic write
when the transport and the store share this database.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from orchestrator.errors import ConfigError, DatabaseGone
from orchestrator.tables import added_indexes, migrate_to_2
from orchestrator.tables import schema as table_schema

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 30.0
# Waits between tries for the write lock: from MIN, growing by half each try, up to MAX
# (seconds); ``busy_timeout_s`` bounds the whole wait.
MIN_LOCK_WAIT_S = 0.0001
MAX_LOCK_WAIT_S = 0.005
#: log pages after which a connection checkpoints by itself: a backstop, as each process's
#: checkpointer thread (``_checkpoint_loop``) copies the log back every CHECKPOINT_INTERVAL_S
WAL_AUTOCHECKPOINT_PAGES = 20_000
CHECKPOINT_INTERVAL_S = 0.5
#: how often a thread's transactions look whether the database file was deleted or replaced
FILE_CHECK_INTERVAL_S = 0.25

#: the page size of a file this code creates (bytes)
PAGE_SIZE = 8192
#: the schema this code writes (table ``schema_version``); a newer file is refused
SCHEMA_VERSION = 2
OUR_TABLES = frozenset({"queues", "messages", "topics", "subscriptions", "jobs"})

_CHECKPOINTERS_LOCK = threading.Lock()
#: held by a checkpointer thread while it is inside SQLite, and taken by ``os.fork`` before it
#: forks: a child forked while that thread held one of SQLite's own mutexes inherits it held,
#: and its first ``connect`` waits forever (seen: a stage process forked by a process that had
#: seeded the file)
_IN_SQLITE = threading.Lock()


def _before_fork() -> None:
    _IN_SQLITE.acquire()


def _after_fork_in_parent() -> None:
    _IN_SQLITE.release()


def _new_locks_in_child() -> None:
    # a fork while another thread held a lock would leave the child's copy locked forever
    # (no checkpointer thread lives on in the child: it starts its own)
    global _CHECKPOINTERS_LOCK, _IN_SQLITE
    _CHECKPOINTERS_LOCK = threading.Lock()
    _IN_SQLITE = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_new_locks_in_child)


def _checkpoint_loop(db: weakref.ref[SqliteDatabase], stop: threading.Event, path: str) -> None:
    """Copy the write-ahead log back into the database every ``CHECKPOINT_INTERVAL_S``, from a
    thread of its own: a checkpoint mostly waits for its fsync (0.17 s of a 2 s run's 0.21 s of
    checkpointing), and a worker's commit that crossed the log limit used to wait with it.
    PASSIVE: it never blocks a reader or the writer, and copies what it can. Ends when the
    database is closed or gone (never creates the file: ``mode=rw``)."""
    conn = None
    try:
        while not stop.wait(CHECKPOINT_INTERVAL_S) and db() is not None:
            with _IN_SQLITE:
                try:
                    conn = _checkpoint(conn, path)
                except sqlite3.Error:
                    if not os.path.exists(path):
                        return
    finally:
        if conn is not None:
            with _IN_SQLITE:
                conn.close()


def _checkpoint(conn: sqlite3.Connection | None, path: str) -> sqlite3.Connection:
    """One passive checkpoint (the connection opened on the first); the connection."""
    if conn is None:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                               timeout=0, check_same_thread=False)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return conn


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
                 create: bool = True) -> None:
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        if self.path != ":memory:":
            if not create and not Path(self.path).is_file():
                raise ConfigError(f"database {self.path} does not exist (`orchestrator setup`, `submit` or a worker "
                                  "creates it; check the path)")
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise ConfigError(f"cannot open SQLite database {self.path}: directory {parent} does not exist")
            # The file holds job records (user ids, emails): only its owner reads it. SQLite
            # gives the -wal and -shm files the database file's mode.
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise ConfigError(f"cannot create SQLite database {self.path}: {exc.strerror}") from exc
        self._local = threading.local()
        self._checkpointer_pid: int | None = None
        self._checkpointer_stop = threading.Event()
        self.run(lambda c: self._ensure_schema(c, create))

    def _ensure_schema(self, c: sqlite3.Connection, create: bool) -> None:
        """Create our tables in a new file; accept a file we made; refuse anything else before
        writing to it: another application's database, or one a newer orchestrator migrated."""
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" in tables:
            found = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if found is None or found > SCHEMA_VERSION:
                raise ConfigError(f"database {self.path} is at schema version {found}, newer than this orchestrator "
                                  f"knows ({SCHEMA_VERSION}): upgrade orchestrator before using it")
            self._migrate(c, found)
            for statement in added_indexes("sqlite").values():
                c.execute(statement)
            return
        ours = tables & OUR_TABLES
        jobs_cols = {r[1] for r in c.execute("PRAGMA table_info(jobs)")} if "jobs" in tables else set()
        legacy = ours == OUR_TABLES and "doc" in jobs_cols  # made before the version table existed
        if (tables and not legacy) or (not tables and not create):
            what = f"tables {', '.join(sorted(tables))}" if tables else "no tables"
            raise ConfigError(f"{self.path} is not an orchestrator database ({what}); refusing to write to it")
        # a file made before the version table has the first version's tables: migrated from there
        for statement in [] if legacy else table_schema("sqlite").split(";"):  # not executescript: it would COMMIT
            if statement.strip():
                c.execute(statement)
        c.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        c.execute("INSERT INTO schema_version(version) VALUES (?)", (1 if legacy else SCHEMA_VERSION,))
        self._migrate(c, 1 if legacy else SCHEMA_VERSION)

    @staticmethod
    def _migrate(c: sqlite3.Connection, found: int) -> None:
        if found < 2:  # messages gain a priority; the ready index becomes per priority
            for statement in migrate_to_2("sqlite"):
                c.execute(statement)
            c.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION,))

    def conn(self) -> sqlite3.Connection:
        loc = self._local
        if getattr(loc, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s,
                                       check_same_thread=False)
                # A new file's pages (set before WAL, which fixes them; a file that exists keeps
                # its own): a COMMIT writes a log frame per page it changed, and fewer, larger
                # frames held the write lock for less (the two-stage pipeline +4 to +17%, bench/why.md).
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
                # WAL lets readers run beside the one writer; NORMAL sync survives a killed
                # process (only an OS crash can lose the last transactions).
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # Checkpoints are the checkpointer thread's (see ``_checkpoint_loop``); a
                # connection checkpoints by itself only past a large log.
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                # No busy handler in SQLite: ``run`` waits for the write lock itself. SQLite's own
                # handler sleeps 1, 2, 5, 10... ms between tries, while a writer here holds the
                # lock for a fraction of a millisecond: two workers on one file spent more time
                # asleep than working.
                conn.execute("PRAGMA busy_timeout=0")
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open SQLite database {self.path}: {exc}") from exc
            loc.conn, loc.pid, loc.depth = conn, os.getpid(), 0
            loc.identity = self._identity()
            self._start_checkpointer()
        return loc.conn  # type: ignore[no-any-return]

    def _start_checkpointer(self) -> None:
        """One checkpointer thread per database and process (a forked child starts its own)."""
        with _CHECKPOINTERS_LOCK:
            if self.path == ":memory:" or self._checkpointer_pid == os.getpid():
                return
            self._checkpointer_pid = os.getpid()
            self._checkpointer_stop = threading.Event()
            threading.Thread(target=_checkpoint_loop, args=(weakref.ref(self), self._checkpointer_stop, self.path),
                             name="sqlite-checkpointer", daemon=True).start()

    def _identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (-1, -1)
        return (st.st_dev, st.st_ino)

    def check_file(self) -> None:
        """Raise ``DatabaseGone`` if the file this connection opened was deleted or replaced:
        SQLite would go on writing to the unlinked inode, which nobody else will ever read.
        Looks at most every ``FILE_CHECK_INTERVAL_S`` per thread (a stat is cheap, not free)."""
        opened = getattr(self._local, "identity", None)
        if opened is None:
            return
        now = time.monotonic()
        if now - getattr(self._local, "checked_at", float("-inf")) < FILE_CHECK_INTERVAL_S:
            return
        self._local.checked_at = now
        if self._identity() != opened:
            raise DatabaseGone(f"database {self.path} was deleted or replaced while this process used it; "
                               "stopping (its writes would be lost)")

    def run(self, fn: Callable[[sqlite3.Connection], T], *, begin: bool = True) -> T:
        """Run ``fn`` in a write transaction, retrying the whole of it on lock errors.

        ``fn`` must be safe to re-run: a retried attempt starts from a rolled-back state.
        """
        conn = self.conn()
        if self._local.depth > 0:
            return fn(conn)
        self.check_file()
        deadline = time.monotonic() + self.busy_timeout_s
        pause = MIN_LOCK_WAIT_S
        while True:
            try:
                if begin:
                    conn.execute("BEGIN IMMEDIATE")
                self._local.depth = 1
                try:
                    result = fn(conn)
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                if conn.in_transaction:
                    conn.commit()
                return result
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 1.5, MAX_LOCK_WAIT_S)
            finally:
                self._local.depth = 0

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction as a ``with`` block. ``BEGIN IMMEDIATE`` takes the write lock at
        once (waiting for it as ``run`` does), so no statement inside meets a lock error."""
        conn = self.conn()
        if self._local.depth > 0:
            yield conn
            return
        self.check_file()
        deadline = time.monotonic() + self.busy_timeout_s
        pause = MIN_LOCK_WAIT_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 1.5, MAX_LOCK_WAIT_S)
        self._local.depth = 1
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        else:
            if conn.in_transaction:
                conn.commit()
        finally:
            self._local.depth = 0

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        conn = self.conn()
        if self._local.depth == 0:
            self.check_file()
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return list(conn.execute(sql, params).fetchall())
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(MAX_LOCK_WAIT_S * random.random())

    def close(self) -> None:
        if self._checkpointer_pid == os.getpid():
            self._checkpointer_stop.set()
            self._checkpointer_pid = None
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
            self._local.pid = None
