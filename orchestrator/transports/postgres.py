"""Queues and topics in PostgreSQL (``transports/sql.py`` with PostgreSQL's two differences).

A claim locks its rows ``FOR UPDATE SKIP LOCKED``: concurrent receivers on many machines pass
over each other's rows instead of queueing behind them. Each send calls ``pg_notify`` in its own
transaction (delivered at commit, once per queue per transaction), which wakes idle receivers
at once: they neither busy-poll nor sleep a full poll interval.
"""

from __future__ import annotations

from typing import Any

from orchestrator.backends.postgres_db import PgConn, PostgresDatabase
from orchestrator.clock import Clock, SystemClock
from orchestrator.database import Conn
from orchestrator.transports.sql import PRIORITIES, SqlTopic, SqlTransport

#: an idle receiver looks again at least this often, notification or not (a listener that
#: reconnects can miss one)
MAX_IDLE_WAIT_S = 1.0


class PostgresTransport(SqlTransport):
    single_statement_claims = True

    def _ready_sql(self, prios: tuple[int, ...] = PRIORITIES) -> str:
        # A lateral probe per priority, highest first, each locking FOR UPDATE SKIP LOCKED
        # (PostgreSQL allows no row lock inside a UNION): concurrent receivers pass over each
        # other's rows, and the outer LIMIT stops the probes (and their locks) once it is full.
        values = ",".join(f"({p})" for p in prios)
        return (f"SELECT r.seq FROM (VALUES {values}) AS p(pr) CROSS JOIN LATERAL (SELECT seq FROM messages "
                "WHERE queue=? AND priority=p.pr AND visible_at<=? ORDER BY visible_at, seq LIMIT ? "
                "FOR UPDATE SKIP LOCKED) AS r LIMIT ?")

    def _ready_params(self, queue: str, now: float, limit: int, prios: tuple[int, ...] = PRIORITIES
                      ) -> tuple[Any, ...]:
        return (queue, now, limit, limit)

    def __init__(self, db: PostgresDatabase, *, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)
        self.pg = db

    def _insert_messages(self, c: Conn, rows: list[tuple[Any, ...]]) -> None:
        # one statement of arrays (in binary: as text the bodies would be escaped character by
        # character), in the rows' order, whatever their number
        if len(rows) < 2:
            return super()._insert_messages(c, rows)
        cols = [list(col) for col in zip(*rows, strict=True)]
        assert isinstance(c, PgConn)
        c.conn.cursor(binary=True).execute(
            "INSERT INTO messages(queue, message_id, body, attrs, visible_at, enqueued_at, priority) "
            "SELECT q, m, b, a, v, e, p FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], "
            "%b::float8[], %b::int[]) WITH ORDINALITY AS t(q, m, b, a, v, e, p, n) ORDER BY n "
            "ON CONFLICT DO NOTHING", cols)
        return None

    def _sent(self, c: Conn, queue: str) -> None:
        c.execute("SELECT pg_notify(?, ?)", (self.pg.channel, queue))

    def _wait(self, queue: str, deadline: float) -> None:
        if not isinstance(self.clock, SystemClock):
            return super()._wait(queue, deadline)  # simulated time: nothing to listen for
        now = self.clock.now()
        timeout = min(deadline - now, MAX_IDLE_WAIT_S)
        nxt = self.next_visible_at(queue)
        if nxt is not None and nxt > now:
            timeout = min(timeout, nxt - now)  # a delayed message comes due
        elif nxt is not None:
            timeout = min(timeout, 0.01)  # ready but locked by a claim in flight: look again soon
        self.pg.wait_for_notify(timeout)
        return None


class PostgresTopic(SqlTopic):
    pass
