"""The status store in PostgreSQL: the jobs table of ``stores/sql.py``.

Under READ COMMITTED the swap's ``WHERE version=?`` is re-checked against the row a concurrent
writer committed, so the compare-and-swap holds across machines as it does on SQLite.

A batch's swaps go out together (psycopg pipelines ``executemany``): one round trip for the
batch instead of one per job. A job whose swap lost, or whose rule refused the record the
caller knew, is judged again on a fresh read, one at a time, as ``CasStatusStore`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.clock import Clock
from orchestrator.errors import StoreError
from orchestrator.postgres_db import PgConn, PostgresDatabase
from orchestrator.status import JobRecord
from orchestrator.stores.cas import Prepared, Rule, Then
from orchestrator.stores.sql import SqlStatusStore


class PostgresStatusStore(SqlStatusStore):
    def __init__(self, db: PostgresDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def _mutate_many_then(self, pairs: Sequence[tuple[str, Rule]], known: dict[str, JobRecord], then: Then | None
                          ) -> list[JobRecord | StoreError]:
        prepared = self._prepare(pairs, known)  # rules and JSON before the transaction

        def tx(c: PgConn) -> list[JobRecord | StoreError]:
            results = self._write_pipelined(c, pairs, prepared)
            if then is not None:
                then(results)
            return results

        return self.db.run(tx)

    def _write_pipelined(self, c: PgConn, pairs: Sequence[tuple[str, Rule]], prepared: Sequence[Prepared | None]
                         ) -> list[JobRecord | StoreError]:
        out: list[JobRecord | StoreError | None] = [None] * len(pairs)
        fast: list[tuple[int, Prepared]] = []
        seen: set[str] = set()
        for pos, pre in enumerate(prepared):
            # a second write to one job in the batch must see the first: one at a time below
            if pre is not None and pre.record.job_id not in seen:
                seen.add(pre.record.job_id)
                fast.append((pos, pre))
        if fast:
            params: list[tuple[Any, ...]] = [
                (p.record.status.value, p.record.version, p.encoded, p.record.job_id, p.expected_version)
                for _, p in fast]
            cur = c.conn.cursor()
            cur.executemany("UPDATE jobs SET status=%s, version=%s, doc=%s WHERE job_id=%s AND version=%s "
                            "RETURNING job_id", params, returning=True)
            swapped: set[str] = set()
            while True:
                swapped.update(r[0] for r in cur.fetchall())
                if not cur.nextset():
                    break
            for pos, pre in fast:
                if pre.record.job_id in swapped:
                    out[pos] = pre.record
        for pos, (job_id, rule) in enumerate(pairs):
            if out[pos] is None:
                try:
                    out[pos] = self._mutate(job_id, rule)
                except StoreError as exc:
                    out[pos] = exc
        return [r for r in out if r is not None]
