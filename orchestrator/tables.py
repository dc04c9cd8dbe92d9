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
CREATE TABLE IF NOT EXISTS {t}jobs (
    job_id TEXT PRIMARY KEY, user_id TEXT, status TEXT NOT NULL, version INTEGER NOT NULL,
    created_at {real} NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_user ON {t}jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON {t}jobs(status, created_at);
-- the latest jobs of all (a dashboard's page, its charts): read from the end of this index
CREATE INDEX IF NOT EXISTS jobs_created ON {t}jobs(created_at, job_id);
"""
_POSTGRES_ONLY = "CREATE TABLE IF NOT EXISTS {t}objects (key TEXT PRIMARY KEY, data BYTEA NOT NULL);\n"

#: schema 1 -> 2: messages gain a priority; the ready index becomes per priority
_MIGRATE_TO_2 = (
    "ALTER TABLE {t}messages ADD COLUMN{if_absent} priority INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE {t}queues ADD COLUMN{if_absent} priorities INTEGER NOT NULL DEFAULT 1",
    "DROP INDEX IF EXISTS {t}messages_ready",
    "CREATE INDEX IF NOT EXISTS messages_ready_p ON {t}messages(queue, priority, visible_at, seq)",
)


def _words(dialect: Dialect, schema: str | None) -> dict[str, str]:
    if dialect == "sqlite":
        return {"t": "", "real": "REAL", "seq": "INTEGER PRIMARY KEY AUTOINCREMENT", "if_absent": ""}
    return {"t": f"{schema}.", "real": "DOUBLE PRECISION", "seq": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "if_absent": " IF NOT EXISTS"}


def schema(dialect: Dialect, schema_name: str | None = None) -> str:
    """The statements that create every table and index (idempotent)."""
    text = _TABLES + (_POSTGRES_ONLY if dialect == "postgres" else "")
    return text.format(**_words(dialect, schema_name))


def migrate_to_2(dialect: Dialect, schema_name: str | None = None) -> tuple[str, ...]:
    # SQLite has no ADD COLUMN IF NOT EXISTS: it runs these once, in the transaction that
    # reads the schema version, so a column is never added twice
    return tuple(s.format(**_words(dialect, schema_name)) for s in _MIGRATE_TO_2)


#: indexes added since a file or schema was first made
_ADDED_INDEXES = ("jobs_created",)


def added_indexes(dialect: Dialect, schema_name: str | None = None) -> dict[str, str]:
    """Index name -> its statement, for the indexes added since a file or schema was made,
    created where missing each time one is opened: an index changes no row, so an earlier
    orchestrator still reads the tables (no schema version is bumped for one)."""
    words = _words(dialect, schema_name)
    return {name: line.strip().rstrip(";").format(**words) for name in _ADDED_INDEXES
            for line in _TABLES.splitlines() if line.startswith(f"CREATE INDEX IF NOT EXISTS {name} ")}
