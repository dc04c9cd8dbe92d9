"""The embedded default status store: the jobs table of the SQLite file (``stores/sql.py``)."""

from __future__ import annotations

from orchestrator.clock import Clock
from orchestrator.sqlite_db import SqliteDatabase
from orchestrator.stores.sql import SqlStatusStore


class SqliteStatusStore(SqlStatusStore):
    def __init__(self, db: SqliteDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)
