"""Status store in a SQL table (SQLite or PostgreSQL): one row per job, the record as JSON.

The swap is one conditional statement (the version is the compare), so it never loses to
another process. A batch's rules and JSON are worked out against the records the caller read,
before the write transaction; inside it only the swaps run, and a job whose swap lost is read,
judged and swapped again there. Called inside a backend's unit of work, the writes join its
transaction (the controller's commit, emit and ack are one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from orchestrator import jobdoc
from orchestrator.base import PreparedWrites, StatusStore
from orchestrator.clock import Clock
from orchestrator.database import Conn, Database
from orchestrator.errors import ConflictError, StoreError
from orchestrator.jobdoc import Doc, decode, encode, full, lean, to_record
from orchestrator.status import JobRecord, JobStatus, NewJob, OutMessage
from orchestrator.stores.cas import CasStatusStore, VersionConflict, holdable, unholdable

#: rows per INSERT of ``create_docs`` (6 parameters each: within SQLite's and psycopg's limits)
INSERT_CHUNK = 200


class SqlStatusStore(CasStatusStore):
    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self.db = db

    def _load(self, job_id: str) -> Doc | None:
        rows = self.db.read("SELECT doc FROM jobs WHERE job_id=?", (job_id,))
        return full(decode(rows[0][0])) if rows else None

    def _encode(self, record: Doc, previous: Doc | None = None) -> str:
        return encode(lean(record))

    def _doc(self, record: Doc, encoded: Any) -> str:
        """The row's ``doc``: the encoding a caller made before the transaction, or made now."""
        return encoded if encoded is not None else self._encode(record)

    def _swap(self, record: Doc, expected_version: int, encoded: Any = None) -> None:
        doc = self._doc(record, encoded)
        job_id, status, version = record["job_id"], record["status"], record["version"]

        def tx(c: Conn) -> None:
            # One statement: the version condition is the compare, the write the swap.
            if expected_version == 0:
                done = c.execute(
                    "INSERT INTO jobs(job_id, user_id, status, version, created_at, doc) VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT DO NOTHING",
                    (job_id, record["user_id"], status, version, record["created_at"], doc),
                ).rowcount
            else:
                # user_id is set once, by the insert: leaving it out spares its index a rewrite
                done = c.execute(
                    "UPDATE jobs SET status=?, version=?, doc=? WHERE job_id=? AND version=?",
                    (status, version, doc, job_id, expected_version),
                ).rowcount
            if not done:
                raise VersionConflict(job_id)

        self.db.run(tx)

    def _mutate(self, job_id: str, rule: Callable[[Doc], Doc], known: Doc | None = None) -> Doc:
        return self.db.run(lambda c: super(SqlStatusStore, self)._mutate(job_id, rule, known))

    def apply(self, writes: PreparedWrites) -> list[Doc | StoreError]:
        # The rules and JSON were made before, outside the write lock: SQLite has one writer at
        # a time, and a batch's Python work held it for most of the batch, so two workers on
        # one file ran little faster than one. Here: conditional updates only, each job that
        # lost its swap judged again inside, in one transaction (the caller's unit, if any).
        return self.db.run(lambda c: self._write_many(writes.rules, writes.prepared))

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, Doc]:
        ids = holdable(job_ids)
        out: dict[str, Doc] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.db.read(f"SELECT doc FROM jobs WHERE job_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
            for (text,) in rows:
                doc = full(decode(text))
                out[doc["job_id"]] = doc
        return out

    def create_doc(
        self, job_id: str, *, user_id: str | None = None, fields: dict[str, Any] | None = None,
        origin: OutMessage | None = None,
    ) -> tuple[Doc, bool]:
        return self.db.run(
            lambda c: super(SqlStatusStore, self).create_doc(job_id, user_id=user_id, fields=fields, origin=origin))

    def create_docs(self, jobs: Sequence[NewJob]) -> list[tuple[Doc, bool]]:
        # New documents and their JSON first, outside the transaction; then one INSERT per
        # chunk that skips the ids taken (RETURNING says which went in), and one read of those.
        now = self.clock.now()
        docs = [jobdoc.new_doc(j.job_id, user_id=j.user_id, fields=j.fields or {}, now=now, origin=j.origin)
                for j in jobs]
        for d in docs:
            d["version"] = 1
        rows = [(d["job_id"], d["user_id"], d["status"], 1, d["created_at"], self._encode(d)) for d in docs]

        def tx(c: Conn) -> list[tuple[Doc, bool]]:
            inserted = self._insert_new(c, rows)
            stored = self.get_docs([d["job_id"] for d in docs if d["job_id"] not in inserted])
            out = []
            for d in docs:
                new = d["job_id"] in inserted and d["job_id"] not in stored
                if new:  # a second copy of this id in the batch finds the first one's job
                    stored[d["job_id"]] = d
                elif d["job_id"] not in stored:  # taken, then purged before our read (PostgreSQL)
                    raise ConflictError(f"job {d['job_id']}: removed while it was submitted again; submit again")
                out.append((stored[d["job_id"]], new))
            return out

        return self.db.run(tx)

    def _insert_new(self, c: Conn, rows: Sequence[tuple[Any, ...]]) -> set[str]:
        """Insert the rows whose job id is free; the ids inserted."""
        inserted: set[str] = set()
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start:start + INSERT_CHUNK]
            values = ",".join(["(?,?,?,?,?,?)"] * len(chunk))
            inserted.update(r[0] for r in c.execute(
                f"INSERT INTO jobs(job_id, user_id, status, version, created_at, doc) VALUES {values} "
                "ON CONFLICT DO NOTHING RETURNING job_id", [v for row in chunk for v in row]).fetchall())
        return inserted

    def delete(self, job_id: str, *, version: int) -> bool:
        return bool(self.db.run(lambda c: c.execute(
            "DELETE FROM jobs WHERE job_id=? AND version=?", (job_id, version)).rowcount))

    def query(self, *, user_id: str | None = None, status: JobStatus | None = None, since: float | None = None,
              limit: int | None = None) -> list[JobRecord]:
        if unholdable(user_id) or (limit is not None and limit <= 0):
            return []
        sql, params = "SELECT doc, created_at, job_id FROM jobs WHERE 1=1", []
        for column, value in (("user_id=?", user_id), ("created_at>=?", since),
                              ("status=?", None if status is None else JobStatus(status).value)):  # (a name too)
            if value is not None:
                sql += f" AND {column}"
                params.append(value)
        if limit is not None:  # the latest, newest first through the index, then put back in order
            sql = f"SELECT doc FROM ({sql} ORDER BY created_at DESC, job_id DESC LIMIT ?) AS latest"
            params.append(min(limit, 2**63 - 1))
        rows = self.db.read(sql + " ORDER BY created_at, job_id", tuple(params))
        return [to_record(full(decode(r[0]))) for r in rows]


_: type[StatusStore] = SqlStatusStore
