"""The embedded default status store: the jobs table of the SQLite file (``stores/sql.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from orchestrator.backends.sqlite_db import SqliteDatabase
from orchestrator.clock import Clock
from orchestrator.database import Conn
from orchestrator.errors import StoreError
from orchestrator.jobdoc import Doc
from orchestrator.stores.cas import Prepared
from orchestrator.stores.sql import SqlStatusStore

#: jobs per version read (one parameter each; SQLite allows 32,766)
SWAP_CHUNK = 500


class SqliteStatusStore(SqlStatusStore):
    def __init__(self, db: SqliteDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def _swap_many(self, prepared: Sequence[tuple[int, Prepared]]) -> dict[int, Doc | StoreError]:
        """A batch's swaps in one write transaction: the versions of its jobs read by one
        statement, then the rows whose version is the expected one updated by one
        ``executemany`` (the others are judged again by ``_write_many``). The read and the
        writes hold SQLite's one write lock, so no other writer comes between them, and the
        lock, which every process of every stage queues for, is held for less: the swaps as one
        ``UPDATE ... FROM (VALUES ...)`` took 1.4x to 1.7x as long a row (the VALUES, each
        row's JSON, are first copied into a table of their own)."""
        updates = [(pos, p) for pos, p in prepared if p.expected_version > 0]
        out = super()._swap_many([(pos, p) for pos, p in prepared if p.expected_version == 0])
        for start in range(0, len(updates), SWAP_CHUNK):
            chunk = updates[start:start + SWAP_CHUNK]
            won = self.db.run(partial(self._swap_chunk, chunk=chunk))
            out.update((pos, p.record) for pos, p in won)
        return out

    def _swap_chunk(self, c: Conn, chunk: Sequence[tuple[int, Prepared]]) -> list[tuple[int, Prepared]]:
        ids = [p.record["job_id"] for _, p in chunk]
        current = dict(c.execute(f"SELECT job_id, version FROM jobs WHERE job_id IN ({','.join('?' * len(ids))})",
                                 ids).fetchall())
        won = [(pos, p) for pos, p in chunk if current.get(p.record["job_id"]) == p.expected_version]
        # (the version stays a condition: the statement alone is then still a compare and swap)
        c.executemany("UPDATE jobs SET status=?, version=?, doc=? WHERE job_id=? AND version=?",
                      [(p.record["status"], p.record["version"], self._doc(p.record, p.encoded), p.record["job_id"],
                        p.expected_version) for _, p in won])
        return won
