"""The embedded default status store: the jobs table of the SQLite file (``stores/sql.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.backends.sqlite_db import SqliteDatabase
from orchestrator.clock import Clock
from orchestrator.database import Conn
from orchestrator.errors import StoreError
from orchestrator.jobdoc import Doc
from orchestrator.stores.cas import Prepared
from orchestrator.stores.sql import SqlStatusStore

#: rows per UPDATE statement (5 parameters each; SQLite allows 32,766)
SWAP_CHUNK = 500


class SqliteStatusStore(SqlStatusStore):
    def __init__(self, db: SqliteDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def _swap_many(self, prepared: Sequence[tuple[int, Prepared]]) -> dict[int, Doc | StoreError]:
        """A batch's swaps as one statement: every row's version is its own compare, and
        RETURNING names the jobs whose swap won (the others are judged again by
        ``_write_many``). One statement instead of one per job keeps the write lock, which
        every process of every stage queues for, held for less time."""
        updates = [(pos, p) for pos, p in prepared if p.expected_version > 0]
        out = super()._swap_many([(pos, p) for pos, p in prepared if p.expected_version == 0])
        for start in range(0, len(updates), SWAP_CHUNK):
            chunk = updates[start:start + SWAP_CHUNK]
            params: list[object] = []
            for _, p in chunk:
                params += [p.record["job_id"], p.expected_version, p.record["status"], p.record["version"],
                           self._doc(p.record, p.encoded)]
            sql = ("UPDATE jobs SET status=v.column3, version=v.column4, doc=v.column5 "
                   f"FROM (VALUES {','.join(['(?,?,?,?,?)'] * len(chunk))}) AS v "
                   "WHERE jobs.job_id=v.column1 AND jobs.version=v.column2 RETURNING jobs.job_id")
            won = {r[0] for r in self.db.run(_returning(sql, params))}
            out.update((pos, p.record) for pos, p in chunk if p.record["job_id"] in won)
        return out


def _returning(sql: str, params: list[object]) -> Callable[[Conn], list[Any]]:
    return lambda c: list(c.execute(sql, params).fetchall())
