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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from orchestrator.errors import ConfigError

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 30.0
# Waits between tries for the write lock: from MIN, growing by half each try, up to MAX
# (seconds); ``busy_timeout_s`` bounds the whole wait.
MIN_LOCK_WAIT_S = 0.0001
MAX_LOCK_WAIT_S = 0.005

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY, visibility_s REAL NOT NULL, max_receives INTEGER NOT NULL,
    dead_letter TEXT, fifo INTEGER NOT NULL DEFAULT 0, delay_s REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL, attrs TEXT NOT NULL DEFAULT '{}', visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, leased INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL, enqueued_at REAL NOT NULL);
-- receive reads the first ready rows of one queue from this index: its cost does not grow
-- with the backlog of leased or delayed messages.
CREATE INDEX IF NOT EXISTS messages_ready ON messages(queue, visible_at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages(queue, message_id);
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL, queue TEXT NOT NULL, raw INTEGER NOT NULL, PRIMARY KEY (topic, queue));
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, user_id TEXT, status TEXT NOT NULL, version INTEGER NOT NULL,
    created_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
"""


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = str(path)
        self.busy_timeout_s = busy_timeout_s
        if self.path != ":memory:":
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
        self.run(lambda c: c.executescript(SCHEMA) and None, begin=False)

    def conn(self) -> sqlite3.Connection:
        loc = self._local
        if getattr(loc, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s,
                                       check_same_thread=False)
                # WAL lets readers run beside the one writer; NORMAL sync survives a killed
                # process (only an OS crash can lose the last transactions).
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # No busy handler in SQLite: ``run`` waits for the write lock itself. SQLite's own
                # handler sleeps 1, 2, 5, 10... ms between tries, while a writer here holds the
                # lock for a fraction of a millisecond: two workers on one file spent more time
                # asleep than working.
                conn.execute("PRAGMA busy_timeout=0")
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open SQLite database {self.path}: {exc}") from exc
            loc.conn, loc.pid, loc.depth = conn, os.getpid(), 0
        return loc.conn  # type: ignore[no-any-return]

    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    def run(self, fn: Callable[[sqlite3.Connection], T], *, begin: bool = True) -> T:
        """Run ``fn`` in a write transaction, retrying the whole of it on lock errors.

        ``fn`` must be safe to re-run: a retried attempt starts from a rolled-back state.
        """
        conn = self.conn()
        if self._local.depth > 0:
            return fn(conn)
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

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        conn = self.conn()
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return list(conn.execute(sql, params).fetchall())
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(MAX_LOCK_WAIT_S * random.random())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
            self._local.pid = None
