"""Queues and topics in PostgreSQL (``transports/sql.py`` with PostgreSQL's differences).

A send is one statement: it reads the queue's own delay, inserts the rows and calls
``pg_notify`` (delivered at commit, once per queue per transaction), which wakes idle receivers
at once: they neither busy-poll nor sleep a full poll interval. A claim locks its rows
``FOR UPDATE SKIP LOCKED``: concurrent receivers on many machines pass over each other's rows
instead of queueing behind them.
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


#: ``_send``'s statement: (queue, queue, now, now, ids, bodies, attrs, delays, priorities,
#: channel, queue) -> the queue's priority mask (NULL when the queue has no row). A delay of 0
#: takes the queue's own, as ``SqlTransport._send`` does.
_SEND = (
    "WITH q AS (SELECT delay_s, priorities FROM queues WHERE name=%b), "
    "ins AS (INSERT INTO messages(queue, message_id, body, attrs, visible_at, enqueued_at, priority) "
    "SELECT %b, m, b, a, %b::float8 + CASE WHEN d <> 0 THEN d ELSE COALESCE((SELECT delay_s FROM q), 0) END, "
    "%b::float8, p FROM unnest(%b::text[], %b::text[], %b::text[], %b::float8[], %b::int[]) "
    "WITH ORDINALITY AS t(m, b, a, d, p, n) ORDER BY n ON CONFLICT DO NOTHING) "
    "SELECT (SELECT priorities FROM q), pg_notify(%b, %b)")


#: ``_SEND`` for one message, its columns as plain values: (queue, queue, id, body, attrs, now,
#: delay, delay, now, priority, channel, queue). A submit sends one, and psycopg's Python
#: array dumpers cost more than the rest of the statement's client side.
_SEND_ONE = (
    "WITH q AS (SELECT delay_s, priorities FROM queues WHERE name=%s), "
    "ins AS (INSERT INTO messages(queue, message_id, body, attrs, visible_at, enqueued_at, priority) "
    "SELECT %s, %s, %s, %s, %s::float8 + CASE WHEN %s::float8 <> 0 THEN %s::float8 "
    "ELSE COALESCE((SELECT delay_s FROM q), 0) END, %s::float8, %s::int ON CONFLICT DO NOTHING) "
    "SELECT (SELECT priorities FROM q), pg_notify(%s, %s)")


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

    def _send(self, c: Conn, queue: str, encoded: list[tuple[str, str, str, float, int]], mask: int) -> None:
        # One statement: the queue's own delay read, the rows inserted as arrays (in binary: as
        # text the bodies would be escaped character by character), in order, and the
        # notification, which PostgreSQL delivers at commit. Three statements were three round
        # trips of ~0.2 ms each on a submit or a batch's emit.
        if not encoded:  # (an empty array has no type to send in binary)
            return super()._send(c, queue, encoded, mask)
        assert isinstance(c, PgConn)
        now = self.clock.now()
        cur = c.conn.cursor(binary=True)
        if len(encoded) == 1:
            [(mid, body, attrs, delay, priority)] = encoded
            cur.execute(_SEND_ONE, [queue, queue, mid, body, attrs, now, float(delay), float(delay), now, priority,
                                    self.pg.channel, queue])
        else:
            ids, bodies, attrses, delays, priorities = (list(col) for col in zip(*encoded, strict=True))
            delays = [float(d) for d in delays]  # (an int among floats would make the array mixed)
            cur.execute(_SEND, [queue, queue, now, now, ids, bodies, attrses, delays, priorities, self.pg.channel,
                                queue])
        row = cur.fetchone()
        self._note_priorities(c, queue, row[0] if row else None, mask)

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
