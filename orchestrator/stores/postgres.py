"""The status store in PostgreSQL: the jobs table of ``stores/sql.py``.

Under READ COMMITTED the swap's ``WHERE version=?`` is re-checked against the row a concurrent
writer committed, so the compare-and-swap holds across machines as it does on SQLite.

A batch's swaps are one statement of arrays: one round trip and one plan for the batch
instead of one per job. A job whose swap lost, or whose rule refused the record the
caller knew, is judged again on a fresh read, one at a time, as ``CasStatusStore`` does. The
rules and the JSON are worked out before the transaction (``SqlStatusStore``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.backends.postgres_db import PgConn, PostgresDatabase
from orchestrator.clock import Clock
from orchestrator.errors import StoreError
from orchestrator.jobdoc import Doc, decode, full
from orchestrator.stores.cas import Prepared, holdable
from orchestrator.stores.sql import SqlStatusStore


class PostgresStatusStore(SqlStatusStore):
    def __init__(self, db: PostgresDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, Doc]:
        # one array parameter, not a placeholder per id (a bulk submit reads 500 at once)
        ids = holdable(job_ids)
        if len(ids) < 2:
            return super().get_docs(ids)
        rows = self.db.read("SELECT doc FROM jobs WHERE job_id = ANY(?::text[])", (ids,))
        out: dict[str, Doc] = {}
        for (text,) in rows:
            doc = full(decode(text))
            out[doc["job_id"]] = doc
        return out

    def _insert_new(self, c: Any, rows: Sequence[tuple[Any, ...]]) -> set[str]:
        # one statement of six arrays, whatever the number of rows: a VALUES list of thousands
        # of placeholders cost more to parse (psycopg's and the server's) than to insert; sent
        # in binary, as text arrays they would be escaped character by character
        if len(rows) < 2:
            return super()._insert_new(c, rows)
        columns = list(zip(*rows, strict=True))
        cur = c.conn.cursor(binary=True)
        cur.execute("INSERT INTO jobs(job_id, user_id, status, version, created_at, doc) "
                    "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::float8[], %b::text[]) "
                    "ON CONFLICT DO NOTHING RETURNING job_id", [list(col) for col in columns])
        return {r[0] for r in cur.fetchall()}

    def _swap_many(self, prepared: Sequence[tuple[int, Prepared]]) -> dict[int, Doc | StoreError]:
        """The batch's swaps as one statement of five arrays: every row's version is its own
        compare, and RETURNING names the jobs whose swap won (the others are judged again by
        ``_write_many``). One statement, not a pipelined one per job: the server plans and runs
        one UPDATE instead of a hundred (measured in one process: 5.3 -> 2.9 ms for a batch of
        ~80). New jobs (expected version 0) are inserted one by one."""
        updates = [(pos, p) for pos, p in prepared if p.expected_version > 0]
        out = super()._swap_many([(pos, p) for pos, p in prepared if p.expected_version == 0])
        if not updates:
            return out
        rows = [(p.record["job_id"], p.expected_version, p.record["status"], p.record["version"],
                 self._doc(p.record, p.encoded)) for _, p in updates]
        columns = [list(col) for col in zip(*rows, strict=True)]

        def tx(c: PgConn) -> set[str]:
            cur = c.conn.cursor(binary=True)
            cur.execute("UPDATE jobs SET status=v.status, version=v.version, doc=v.doc "
                        "FROM unnest(%b::text[], %b::int[], %b::text[], %b::int[], %b::text[]) "
                        "AS v(job_id, expected, status, version, doc) "
                        "WHERE jobs.job_id=v.job_id AND jobs.version=v.expected RETURNING jobs.job_id", columns)
            return {r[0] for r in cur.fetchall()}

        won = self.db.run(tx)
        out.update((pos, p.record) for pos, p in updates if p.record["job_id"] in won)
        return out
