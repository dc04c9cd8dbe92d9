"""One PostgreSQL schema shared by the queue, topic, status store and objects.

Connections come from a pool (one per process: a forked worker opens its own). ``run`` holds
one connection for a transaction, and a ``run`` inside a ``run`` on the same thread joins it:
that is how commit + emit + ack are one transaction here too, for workers on many machines.

A transaction that fails because the server went away, the connection was killed, or it lost
a deadlock is re-run from scratch, with backoff, for up to ``reconnect_timeout_s``: the
functions given to ``run`` are written to be re-run (as SQLite's lock waits re-run them), and
a transaction whose COMMIT was lost in flight is re-judged by the status store's conditions.
"""

from __future__ import annotations

import functools
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from orchestrator import tables
from orchestrator.errors import BackendUnavailable, ConfigError, TransactionConflict
from orchestrator.outage import is_outage

T = TypeVar("T")
log = structlog.get_logger("orchestrator.postgres")

#: the schema this code writes; a database at a newer version is refused
SCHEMA_VERSION = 2
DEFAULT_SCHEMA = "orchestrator"
DEFAULT_POOL_SIZE = 8
DEFAULT_RECONNECT_TIMEOUT_S = 120.0
MAX_RETRY_PAUSE_S = 2.0
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")

TABLES = ("queues", "messages", "topics", "subscriptions", "jobs", "objects", "schema_version")
@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The adapters write ``?`` placeholders (SQLite's); psycopg wants ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConn:
    """A psycopg connection speaking the ``Conn`` protocol of ``orchestrator.database``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.conn.cursor()
        cur.executemany(_pg_sql(sql), list(seq))
        return cur


def _retryable(exc: BaseException) -> bool:
    # A lost or refused connection, a killed backend (AdminShutdown), lost deadlocks and
    # serialization failures, the pool's timeout waiting to connect. Not the data errors
    # psycopg also files under OperationalError (an index row over the size limit, SQLSTATE
    # 54000): those fail the same way on every try, and are the caller's to isolate.
    return isinstance(exc, psycopg.OperationalError) and is_outage(exc)


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, conninfo: str, *, schema: str = DEFAULT_SCHEMA, pool_size: int = DEFAULT_POOL_SIZE,
                 reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S, create: bool = True) -> None:
        if not _IDENTIFIER.match(schema):
            raise ConfigError(f"schema name {schema!r}: use lower-case letters, digits and _ (at most 48)")
        self.conninfo = conninfo
        self.schema = schema
        self.channel = f"orchestrator_{schema}"
        self.pool_size = pool_size
        self.reconnect_timeout_s = reconnect_timeout_s
        self._pool: ConnectionPool[Any] | None = None
        self._pool_pid: int | None = None
        self._pool_lock = threading.Lock()
        self._inherited: list[ConnectionPool[Any]] = []
        self._local = threading.local()
        self._ensure_schema(create)

    # -- connections ------------------------------------------------------------------------
    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET search_path TO {self.schema}")

    def pool(self) -> ConnectionPool[Any]:
        pid = os.getpid()
        if self._pool_pid != pid:
            with self._pool_lock:
                if self._pool_pid != pid:
                    if self._pool is not None:
                        # A forked child must not use (or close) its parent's sockets: keep the
                        # inherited pool referenced so nothing closes it, and open our own.
                        self._inherited.append(self._pool)
                    self._pool = ConnectionPool(
                        self.conninfo, min_size=1, max_size=self.pool_size, open=False,
                        kwargs={"autocommit": True, "application_name": f"orchestrator:{self.schema}"},
                        configure=self._configure,
                        timeout=min(10.0, self.reconnect_timeout_s), name=f"orchestrator:{self.schema}")
                    self._pool.open(wait=False)
                    self._pool_pid = pid
        assert self._pool is not None
        return self._pool

    def _retrying(self, attempt: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.reconnect_timeout_s
        pause, failures, outage = 0.05, 0, False
        while True:
            try:
                result = attempt()
            except psycopg.OperationalError as exc:
                if not _retryable(exc):
                    raise
                failures += 1
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"PostgreSQL unavailable for {self.reconnect_timeout_s:.0f}s: "
                                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                             ) from exc
                # Deadlocks and serialization failures are routine under contention: retry quietly.
                if not isinstance(exc, psycopg.errors.TransactionRollback):
                    outage = True
                    first = str(exc).strip().splitlines()
                    log.warning("postgres_unavailable_retrying", what=what, attempt=failures,
                                error=first[0] if first else type(exc).__name__)
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, MAX_RETRY_PAUSE_S)
                continue
            if outage:
                log.warning("postgres_reconnected", what=what, after_attempts=failures)
            return result

    def run(self, fn: Callable[[Any], T], *, begin: bool = True) -> T:
        """Run ``fn`` in one transaction; re-run all of it after a lost connection or deadlock."""
        current: PgConn | None = getattr(self._local, "conn", None)
        if current is not None:
            return fn(current)

        def attempt() -> T:
            with self.pool().connection() as conn:
                wrapped = PgConn(conn)
                self._local.conn = wrapped
                try:
                    if not begin:
                        return fn(wrapped)
                    with conn.transaction():
                        return fn(wrapped)
                finally:
                    self._local.conn = None

        return self._retrying(attempt, "transaction")

    @contextmanager
    def transaction(self) -> Iterator[PgConn]:
        """A write transaction as a ``with`` block on a pooled connection (taken with the same
        reconnect retries as ``run``). What the server says inside is translated here: a lost
        deadlock or serialization failure is ``TransactionConflict``, a lost server
        ``BackendUnavailable``; the data errors stay what they are (the caller isolates them)."""
        current: PgConn | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        conn = self._retrying(self.pool().getconn, "connect")
        try:
            wrapped = PgConn(conn)
            self._local.conn = wrapped
            try:
                with conn.transaction():
                    yield wrapped
            except psycopg.errors.TransactionRollback as exc:
                raise TransactionConflict(f"transaction rolled back by PostgreSQL: {exc}") from exc
            except psycopg.OperationalError as exc:
                if not _retryable(exc):
                    raise
                raise BackendUnavailable(f"PostgreSQL unavailable: {str(exc).strip() or type(exc).__name__}") from exc
        finally:
            self._local.conn = None
            self.pool().putconn(conn)  # (the pool drops a connection that broke)

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        current: PgConn | None = getattr(self._local, "conn", None)
        if current is not None:
            return list(current.execute(sql, params).fetchall())

        def attempt() -> list[Any]:
            with self.pool().connection() as conn:
                return list(conn.execute(_pg_sql(sql), params).fetchall())

        return self._retrying(attempt, "read")

    # -- idle receivers ---------------------------------------------------------------------
    def wait_for_notify(self, timeout_s: float) -> bool:
        """Block until a send commits in this schema (``pg_notify`` on ``channel``) or
        ``timeout_s`` passes. True when woken. A listener that fails is dropped and this
        sleeps instead: a receiver's next poll still finds every message."""
        loc = self._local
        listener: psycopg.Connection[Any] | None = getattr(loc, "listener", None)
        if listener is not None and getattr(loc, "listener_pid", None) != os.getpid():
            listener = None
        try:
            if listener is None:
                listener = psycopg.connect(self.conninfo, autocommit=True,
                                           application_name=f"orchestrator:{self.schema}:listen")
                listener.execute(f"LISTEN {self.channel}")
                loc.listener, loc.listener_pid = listener, os.getpid()
            woken = False
            for _ in listener.notifies(timeout=max(0.0, timeout_s), stop_after=1):
                woken = True
            return woken
        except psycopg.Error:
            loc.listener = None
            time.sleep(min(timeout_s, 0.5))
            return False

    # -- schema -----------------------------------------------------------------------------
    def _ensure_schema(self, create: bool) -> None:
        s = self.schema

        def tx(c: PgConn) -> None:
            # One creator at a time: concurrent CREATE ... IF NOT EXISTS can still collide.
            c.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"orchestrator-schema:{s}",))
            if create:
                c.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            present = {r[0] for r in c.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=?", (s,)).fetchall()}
            if "schema_version" not in present and not create:
                raise ConfigError(f"schema {s!r} holds no orchestrator tables (`orchestrator setup` or a worker "
                                  "creates them; check ?schema=)")
            if "schema_version" not in present:
                ours = present & set(TABLES)
                if ours:
                    raise ConfigError(
                        f"schema {s!r} has tables orchestrator did not create ({', '.join(sorted(ours))}) and no "
                        "schema_version table: refusing to write into another application's tables; pick another "
                        "?schema=")
                c.conn.execute(tables.schema("postgres", s))  # several statements: no parameters, no placeholders
                c.execute(f"CREATE TABLE {s}.schema_version (version INTEGER NOT NULL)")
                c.execute(f"INSERT INTO {s}.schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
                return
            row = c.execute(f"SELECT MAX(version) FROM {s}.schema_version").fetchone()
            found = row[0] if row else None
            if found is None or found > SCHEMA_VERSION:
                raise ConfigError(
                    f"database schema {s!r} is at version {found}, newer than this orchestrator knows "
                    f"({SCHEMA_VERSION}): upgrade orchestrator on this machine before running it against this database")
            if found < 2:
                for statement in tables.migrate_to_2("postgres", s):
                    c.conn.execute(statement)
                c.execute(f"UPDATE {s}.schema_version SET version=?", (SCHEMA_VERSION,))
            # looked up first: CREATE INDEX IF NOT EXISTS locks the table against writes even
            # when the index is there, and every worker's start would wait for the writers
            have = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE schemaname=?", (s,)).fetchall()}
            for name, statement in tables.added_indexes("postgres", s).items():
                if name not in have:
                    c.conn.execute(statement)

        # Straight to the server, without the pool's retries: a wrong URL or a server that is
        # down fails the command at once, with the reason.
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn, conn.transaction():
                tx(PgConn(conn))
        except psycopg.Error as exc:
            raise ConfigError(f"cannot open PostgreSQL database ({_redact(self.conninfo)}): "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                              ) from exc

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
            self._pool, self._pool_pid = None, None
        listener = getattr(self._local, "listener", None)
        if listener is not None and getattr(self._local, "listener_pid", None) == os.getpid():
            listener.close()
            self._local.listener = None


def _redact(conninfo: str) -> str:
    """The connection string without its password, for error messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", re.sub(r"password=\S+", "password=***", conninfo))
