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
from orchestrator.stores.cas import Rule
from orchestrator.stores.sql import SqlStatusStore


class PostgresStatusStore(SqlStatusStore):
    def __init__(self, db: PostgresDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def _mutate_many(self, pairs: Sequence[tuple[str, Rule]], known: dict[str, JobRecord]) -> list[JobRecord | StoreError]:
        return self.db.run(lambda c: self._mutate_many_tx(c, pairs, known))

    def _mutate_many_tx(self, c: PgConn, pairs: Sequence[tuple[str, Rule]], known: dict[str, JobRecord]
                        ) -> list[JobRecord | StoreError]:
        out: list[JobRecord | StoreError | None] = [None] * len(pairs)
        fast: list[tuple[int, JobRecord, int]] = []  # (position, new record, expected version)
        seen: set[str] = set()
        for pos, (job_id, rule) in enumerate(pairs):
            current = known.get(job_id)
            if current is None or job_id in seen:
                continue
            seen.add(job_id)
            try:
                new = rule(current)
            except StoreError:
                continue  # judged on a record that may be stale: judge again below
            new.version = current.version + 1
            fast.append((pos, new, current.version))
        if fast:
            params: list[tuple[Any, ...]] = [
                (new.user_id, new.status.value, new.version, new.model_dump_json(), new.job_id, expected)
                for _, new, expected in fast]
            cur = c.conn.cursor()
            cur.executemany("UPDATE jobs SET user_id=%s, status=%s, version=%s, doc=%s WHERE job_id=%s AND version=%s "
                            "RETURNING job_id", params, returning=True)
            swapped: set[str] = set()
            while True:
                swapped.update(r[0] for r in cur.fetchall())
                if not cur.nextset():
                    break
            for pos, new, _ in fast:
                if new.job_id in swapped:
                    out[pos] = new
        for pos, (job_id, rule) in enumerate(pairs):
            if out[pos] is None:
                try:
                    out[pos] = self._mutate(job_id, rule)
                except StoreError as exc:
                    out[pos] = exc
        return [r for r in out if r is not None]
