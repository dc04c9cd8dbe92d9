"""The status store in PostgreSQL: the jobs table of ``stores/sql.py``.

Under READ COMMITTED the swap's ``WHERE version=?`` is re-checked against the row a concurrent
writer committed, so the compare-and-swap holds across machines as it does on SQLite.
"""

from __future__ import annotations

from orchestrator.clock import Clock
from orchestrator.postgres_db import PostgresDatabase
from orchestrator.stores.sql import SqlStatusStore


class PostgresStatusStore(SqlStatusStore):
    def __init__(self, db: PostgresDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)
