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
from orchestrator.jobdoc import Doc
from orchestrator.stores.cas import Prepared
from orchestrator.stores.sql import DOC_COLUMNS, SqlStatusStore, row_doc


class PostgresStatusStore(SqlStatusStore):
    def __init__(self, db: PostgresDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, Doc]:
        # one array parameter, not a placeholder per id (a bulk submit reads 500 at once)
        ids = list(dict.fromkeys(job_ids))
        if len(ids) < 2:
            return super().get_docs(ids)
        rows = self.db.read(f"SELECT {DOC_COLUMNS} FROM jobs WHERE job_id = ANY(?::text[])", (ids,))
        out: dict[str, Doc] = {}
        for row in rows:
            doc = row_doc(*row)
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

    def _update_many(self, updates: Sequence[Prepared]) -> set[str]:
        """One statement of six arrays, not a pipelined one per job: the server plans and runs
        one UPDATE instead of a hundred (measured in one process: 5.3 -> 2.9 ms for a batch of ~80)."""
        columns = [list(col) for col in zip(*self._update_rows(updates), strict=True)]

        def tx(c: PgConn) -> set[str]:
            cur = c.conn.cursor(binary=True)
            cur.execute("UPDATE jobs SET status=v.status, version=v.version, doc=COALESCE(v.doc, jobs.doc), "
                        "begun=CASE WHEN v.append IS NULL THEN NULL ELSE COALESCE(jobs.begun, '') || v.append END "
                        "FROM unnest(%b::text[], %b::int[], %b::text[], %b::int[], %b::text[], %b::text[]) "
                        "AS v(job_id, expected, status, version, doc, append) "
                        "WHERE jobs.job_id=v.job_id AND jobs.version=v.expected RETURNING jobs.job_id", columns)
            return {r[0] for r in cur.fetchall()}

        return self.db.run(tx)
