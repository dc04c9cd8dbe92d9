"""Status store in a SQL table (SQLite or PostgreSQL): one row per job, the record as JSON.

The swap is one conditional statement (the version is the compare), so it never loses to
another process. A batch's rules and JSON are worked out against the records the caller read,
before the write transaction; inside it only the swaps run, and a job whose swap lost is read,
judged and swapped again there. Called inside a backend's unit of work, the writes join its
transaction (the controller's commit, emit and ack are one).

A first attempt's begin writes no document: it sets the row's status and version and appends its
arguments to ``begun`` (one JSON line), and whoever reads the row applies those begins again to
the document (``row_doc``). Every other write, a redelivery's begin included, stores the whole
document and clears ``begun``. A begin is
most of a stage's writes, and its document, 1-2 KB of JSON, was encoded and rewritten only to
change a step's claim and a status.
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
from orchestrator.status import BeginItem, JobRecord, JobStatus, NewJob, OutMessage
from orchestrator.stores.cas import CasStatusStore, Prepared, VersionConflict, begin_args, begin_rule

#: rows per INSERT of ``create_docs`` (6 parameters each: within SQLite's and psycopg's limits)
INSERT_CHUNK = 200
#: the columns a job's document is read from (``row_doc``)
DOC_COLUMNS = "doc, begun, version"


def row_doc(doc: str, begun: str | None, version: int) -> Doc:
    """A job's document from its row: the document last written, with the begins made since
    applied again in order (each succeeded on exactly this state, so each succeeds again)."""
    out = full(decode(doc))
    if begun:
        for line in begun.split("\n"):
            if line:
                out = jobdoc.begin(out, **decode(line))
        out["version"] = version
    return out


class SqlStatusStore(CasStatusStore):
    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self.db = db

    def _load(self, job_id: str) -> Doc | None:
        rows = self.db.read(f"SELECT {DOC_COLUMNS} FROM jobs WHERE job_id=?", (job_id,))
        return row_doc(*rows[0]) if rows else None

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
                    "UPDATE jobs SET status=?, version=?, doc=?, begun=NULL WHERE job_id=? AND version=?",
                    (status, version, doc, job_id, expected_version),
                ).rowcount
            if not done:
                raise VersionConflict(job_id)

        self.db.run(tx)

    def begin_docs(self, items: Sequence[BeginItem], *, known: dict[str, Doc] | None = None
                   ) -> list[Doc | StoreError]:
        """See ``StatusStore.begin_docs``: each begin judged as ``CasStatusStore`` judges it,
        and written as a line of its arguments instead of the document (module docstring)."""
        known = dict(known or {})
        missing = [i.job_id for i in items if i.job_id not in known]
        if missing:  # read first: a begin judged on no record would be written whole
            known.update(self.get_docs(missing))
        now = self.clock.now()
        args = [begin_args(i, now) for i in items]
        pairs = [(i.job_id, begin_rule(a)) for i, a in zip(items, args, strict=True)]
        prepared = self._prepare(pairs, known, encode=False)
        for pre, a in zip(prepared, args, strict=True):
            if pre is None:
                continue
            # A redelivery or a retry writes the whole document, which clears the lines: a
            # message redelivered without end must not grow its row by a line (and its input)
            # each time.
            if a["attempt"] == 1:
                pre.append = "\n" + encode(a)
            else:
                pre.encoded = self._encode(pre.record)
        return self.apply(PreparedWrites(pairs, prepared))

    def _swap_many(self, prepared: Sequence[tuple[int, Prepared]]) -> dict[int, Doc | StoreError]:
        """New jobs inserted one by one; the updates, of distinct jobs, in one statement
        (``_update_many``). A swap that lost is left out (judged again by ``_write_many``)."""
        updates = [p for _, p in prepared if p.expected_version > 0]
        out = super()._swap_many([(pos, p) for pos, p in prepared if p.expected_version == 0])
        if updates:
            won = self._update_many(updates)
            out.update((pos, p.record) for pos, p in prepared if p.expected_version > 0 and p.record["job_id"] in won)
        return out

    def _update_rows(self, updates: Sequence[Prepared]) -> list[tuple[Any, ...]]:
        """(job_id, expected version, status, version, doc, append) per update: a begin's
        ``doc`` is None (the row keeps its document), any other write's ``append`` is None
        (``begun`` is cleared)."""
        return [(p.record["job_id"], p.expected_version, p.record["status"], p.record["version"],
                 None if p.append is not None else self._doc(p.record, p.encoded), p.append) for p in updates]

    def _update_many(self, updates: Sequence[Prepared]) -> set[str]:
        """Swap ``updates`` (rows of ``_update_rows``) in one statement: each row's version
        is its own compare. The job ids whose swap won."""
        raise NotImplementedError

    def _mutate(self, job_id: str, rule: Callable[[Doc], Doc], known: Doc | None = None) -> Doc:
        return self.db.run(lambda c: super(SqlStatusStore, self)._mutate(job_id, rule, known))

    def apply(self, writes: PreparedWrites) -> list[Doc | StoreError]:
        # The rules and JSON were made before, outside the write lock: SQLite has one writer at
        # a time, and a batch's Python work held it for most of the batch, so two workers on
        # one file ran little faster than one. Here: conditional updates only, each job that
        # lost its swap judged again inside, in one transaction (the caller's unit, if any).
        return self.db.run(lambda c: self._write_many(writes.rules, writes.prepared))

    def get_docs(self, job_ids: Sequence[str]) -> dict[str, Doc]:
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, Doc] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.db.read(f"SELECT {DOC_COLUMNS} FROM jobs WHERE job_id IN ({','.join('?' * len(chunk))})",
                                tuple(chunk))
            for row in rows:
                doc = row_doc(*row)
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

    def query(self, *, user_id: str | None = None, status: JobStatus | None = None) -> list[JobRecord]:
        sql, params = f"SELECT {DOC_COLUMNS} FROM jobs WHERE 1=1", []
        if user_id is not None:
            sql += " AND user_id=?"
            params.append(user_id)
        if status is not None:
            sql += " AND status=?"
            params.append(status.value)
        rows = self.db.read(sql + " ORDER BY created_at, job_id", tuple(params))
        return [to_record(row_doc(*r)) for r in rows]


_: type[StatusStore] = SqlStatusStore
