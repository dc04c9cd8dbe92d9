"""The tables of the SQL backends, written once for SQLite (the embedded default) and
PostgreSQL: queues, their messages, topics and subscriptions, jobs (and, on PostgreSQL, the
objects an embedded file keeps beside it as files). ``schema`` renders them for a dialect."""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]

#: ``{real}`` a float column, ``{seq}`` an increasing row id, ``{t}`` a table's name in its
#: schema (``s.name`` on PostgreSQL), ``{{}}`` a literal ``{}``
_TABLES = """
CREATE TABLE IF NOT EXISTS {t}queues (
    name TEXT PRIMARY KEY, visibility_s {real} NOT NULL, max_receives INTEGER NOT NULL,
    dead_letter TEXT, fifo INTEGER NOT NULL DEFAULT 0, delay_s {real} NOT NULL DEFAULT 0,
    priorities INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS {t}messages (
    seq {seq}, queue TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL, attrs TEXT NOT NULL DEFAULT '{{}}', visible_at {real} NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, leased INTEGER NOT NULL DEFAULT 0,
    first_received_at {real}, enqueued_at {real} NOT NULL, priority INTEGER NOT NULL DEFAULT 0);
-- receive reads the first ready rows of one queue, one priority at a time, from this index:
-- its cost does not grow with the backlog of leased or delayed messages.
CREATE INDEX IF NOT EXISTS messages_ready_p ON {t}messages(queue, priority, visible_at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON {t}messages(queue, message_id);
CREATE TABLE IF NOT EXISTS {t}topics (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {t}subscriptions (
    topic TEXT NOT NULL, queue TEXT NOT NULL, raw INTEGER NOT NULL, PRIMARY KEY (topic, queue));
-- begun: the begins made since doc was last written, one JSON line each (see stores/sql.py):
-- a begin appends a line and sets status and version, and rewrites no document
CREATE TABLE IF NOT EXISTS {t}jobs (
    job_id TEXT PRIMARY KEY, user_id TEXT, status TEXT NOT NULL, version INTEGER NOT NULL,
    created_at {real} NOT NULL, doc TEXT NOT NULL, begun TEXT);
CREATE INDEX IF NOT EXISTS jobs_user ON {t}jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON {t}jobs(status, created_at);
"""
_POSTGRES_ONLY = "CREATE TABLE IF NOT EXISTS {t}objects (key TEXT PRIMARY KEY, data BYTEA NOT NULL);\n"

#: the schema this code writes (table ``schema_version``); a newer database is refused
SCHEMA_VERSION = 3

#: the statements that take a database from the version before each to it
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # messages gain a priority; the ready index becomes per priority
    2: ("ALTER TABLE {t}messages ADD COLUMN{if_absent} priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE {t}queues ADD COLUMN{if_absent} priorities INTEGER NOT NULL DEFAULT 1",
        "DROP INDEX IF EXISTS {t}messages_ready",
        "CREATE INDEX IF NOT EXISTS messages_ready_p ON {t}messages(queue, priority, visible_at, seq)"),
    # jobs gain the begins made since their document was written
    3: ("ALTER TABLE {t}jobs ADD COLUMN{if_absent} begun TEXT",),
}


def _words(dialect: Dialect, schema: str | None) -> dict[str, str]:
    if dialect == "sqlite":
        return {"t": "", "real": "REAL", "seq": "INTEGER PRIMARY KEY AUTOINCREMENT", "if_absent": ""}
    return {"t": f"{schema}.", "real": "DOUBLE PRECISION", "seq": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "if_absent": " IF NOT EXISTS"}


def schema(dialect: Dialect, schema_name: str | None = None) -> str:
    """The statements that create every table and index (idempotent)."""
    text = _TABLES + (_POSTGRES_ONLY if dialect == "postgres" else "")
    return text.format(**_words(dialect, schema_name))


def migrate(dialect: Dialect, schema_name: str | None, found: int) -> tuple[str, ...]:
    """The statements that take a database at version ``found`` to ``SCHEMA_VERSION``.

    SQLite has no ADD COLUMN IF NOT EXISTS: a caller runs these once, in the transaction that
    reads the schema version, so a column is never added twice."""
    words = _words(dialect, schema_name)
    return tuple(s.format(**words) for version in range(found + 1, SCHEMA_VERSION + 1) for s in _MIGRATIONS[version])
