"""The embedded default transport and topic: durable queues in one SQLite file.

The queue logic is ``transports/sql.py``; SQLite needs no row locks (``BEGIN IMMEDIATE``
serialises writers) and an idle receiver polls the file.
"""

from __future__ import annotations

from orchestrator.backends.sqlite_db import SqliteDatabase
from orchestrator.clock import Clock
from orchestrator.transports.sql import SqlTopic, SqlTransport


class SqliteTransport(SqlTransport):
    body_column = "CAST(body AS BLOB)"

    def __init__(self, db: SqliteDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)


class SqliteTopic(SqlTopic):
    pass
