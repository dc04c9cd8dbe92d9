"""The embedded default status store: the jobs table of the SQLite file (``stores/sql.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.backends.sqlite_db import SqliteDatabase
from orchestrator.clock import Clock
from orchestrator.database import Conn
from orchestrator.stores.cas import Prepared
from orchestrator.stores.sql import SqlStatusStore

#: rows per UPDATE statement (6 parameters each; SQLite allows 32,766)
SWAP_CHUNK = 500


class SqliteStatusStore(SqlStatusStore):
    def __init__(self, db: SqliteDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def _update_many(self, updates: Sequence[Prepared]) -> set[str]:
        """One statement per chunk: the write lock, which every process of every stage queues
        for, is held for less time than with one statement per job."""
        won: set[str] = set()
        for start in range(0, len(updates), SWAP_CHUNK):
            rows = self._update_rows(updates[start:start + SWAP_CHUNK])
            sql = ("UPDATE jobs SET status=v.column3, version=v.column4, doc=COALESCE(v.column5, jobs.doc), "
                   "begun=CASE WHEN v.column6 IS NULL THEN NULL ELSE COALESCE(jobs.begun, '') || v.column6 END "
                   f"FROM (VALUES {','.join(['(?,?,?,?,?,?)'] * len(rows))}) AS v "
                   "WHERE jobs.job_id=v.column1 AND jobs.version=v.column2 RETURNING jobs.job_id")
            won.update(r[0] for r in self.db.run(_returning(sql, [v for row in rows for v in row])))
        return won


def _returning(sql: str, params: list[object]) -> Callable[[Conn], list[Any]]:
    return lambda c: list(c.execute(sql, params).fetchall())
