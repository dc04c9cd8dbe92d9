"""Durable queues and topics in SQL tables, written once for SQLite and PostgreSQL.

Safe with several worker processes on one database: a receive leases its rows inside one write
transaction (SQLite's ``BEGIN IMMEDIATE`` serialises them; PostgreSQL's ``FOR UPDATE SKIP
LOCKED`` lets concurrent receivers pass each other's rows), so two workers never hold the same
message at once. Subclasses give the dialect's few differences: the row lock of a claim, the
wake-up of an idle receiver.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from typing import Any

from orchestrator.base import (
    MAX_PRIORITY,
    Delivery,
    Outgoing,
    QueueDepth,
    QueueSpec,
    Topic,
    Transport,
    default_dead_letter,
)
from orchestrator.clock import Clock, SystemClock
from orchestrator.database import Conn, Database
from orchestrator.envelope import MAX_BODY_BYTES
from orchestrator.errors import LeaseLostError
from orchestrator.transports.common import (
    DEAD_LETTER_REASON,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_S,
    DEFAULT_MAX_VISIBILITY_S,
    check_size,
    dead_letter_body,
    new_receipt,
    sns_wrap,
)

POLL_INTERVAL_S = 0.05  # how often an empty long poll looks again
PRIORITIES = tuple(range(MAX_PRIORITY, -1, -1))  # highest first


def _per_priority(select: str, prios: tuple[int, ...] = PRIORITIES) -> str:
    """``select`` (with ``{p}`` for the priority) once per priority, highest first, as one
    UNION ALL: each branch is a range probe of the (queue, priority, visible_at, seq) index,
    so neither a backlog of delayed rows nor many priorities make a probe scan."""
    return " UNION ALL ".join(f"SELECT * FROM ({select.format(p=p)}) AS b{p}" for p in prios)


def _attrs_out(attributes: dict[str, str]) -> str:
    return json.dumps(attributes) if attributes else "{}"  # most messages have none


def _text(body: str | bytes) -> str:
    """A body as text; bytes that are not UTF-8 are kept (as lone surrogates) for the codec
    to refuse, so the message is dead-lettered with the reason instead of failing the receive."""
    return body if isinstance(body, str) else body.decode("utf-8", "surrogateescape")


def _attrs_in(attrs: str) -> dict[str, str]:
    return json.loads(attrs) if attrs != "{}" else {}


def _split(receipt: str) -> tuple[int, str]:
    seq, _, token = receipt.partition(":")
    return int(seq), token


class SqlTransport:
    max_delay_s = DEFAULT_MAX_DELAY_S  # of a retry's release; a send or a snooze takes any delay
    max_visibility_s = DEFAULT_MAX_VISIBILITY_S
    max_batch = DEFAULT_MAX_BATCH
    max_body_bytes = MAX_BODY_BYTES
    #: PostgreSQL claims in one autocommit statement (atomic alone; locks nothing when idle).
    #: SQLite first looks for a ready row outside a transaction, so that an idle worker never
    #: takes the file's one write lock.
    single_statement_claims = False
    #: how a body is read: SQLite reads it as bytes, since another program may have written
    #: a row that is not valid UTF-8 (PostgreSQL's text cannot hold one)
    body_column = "body"

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self.db = db
        self.clock: Clock = clock or SystemClock()

    # -- dialect hooks ------------------------------------------------------------------------
    def _wait(self, queue: str, deadline: float) -> None:
        """Idle until a message may have become ready or ``deadline`` (on ``self.clock``)."""
        self.clock.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - self.clock.now())))

    def ensure_queue(self, spec: QueueSpec) -> None:
        def tx(c: Conn) -> None:
            c.execute(
                "INSERT INTO queues(name, visibility_s, max_receives, dead_letter, fifo, delay_s) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET visibility_s=excluded.visibility_s, "
                "max_receives=excluded.max_receives, dead_letter=excluded.dead_letter, fifo=excluded.fifo, "
                "delay_s=excluded.delay_s",
                (spec.name, spec.visibility_timeout_s, spec.max_receives, spec.dead_letter, int(spec.fifo), spec.delay_s),
            )
            if spec.dead_letter:
                c.execute(
                    "INSERT INTO queues(name, visibility_s, max_receives) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    (spec.dead_letter, spec.visibility_timeout_s, spec.max_receives),
                )

        self.db.run(tx)

    def spec(self, queue: str) -> QueueSpec | None:
        rows = self.db.read("SELECT visibility_s, max_receives, dead_letter, fifo, delay_s FROM queues WHERE name=?", (queue,))
        if not rows:
            return None
        vis, mr, dlq, fifo, delay = rows[0]
        return QueueSpec(queue, visibility_timeout_s=vis, max_receives=mr, dead_letter=dlq, fifo=bool(fifo), delay_s=delay)

    def send(self, queue: str, message: Outgoing) -> str:
        return self.send_batch(queue, [message])[0]

    def send_batch(self, queue: str, messages: Sequence[Outgoing]) -> list[str]:
        for m in messages:
            check_size(m.body, self.max_body_bytes)
        ids = [m.message_id or uuid.uuid4().hex for m in messages]
        # encoded before the transaction (see ``_claim``)
        encoded = [(mid, m.body, _attrs_out(m.attributes), m.delay_s, m.priority)
                   for mid, m in zip(ids, messages, strict=True)]

        mask = 1
        for m in messages:
            mask |= 1 << m.priority
        self.db.run(lambda c: self._send(c, queue, encoded, mask))
        return ids

    def _send(self, c: Conn, queue: str, encoded: list[tuple[str, str, str, float, int]], mask: int) -> None:
        """Insert the (message id, body, attributes, delay, priority) rows: a delay of 0 takes
        the queue's own. A dialect hook: PostgreSQL does it in one statement, and wakes the
        queue's receivers."""
        now = self.clock.now()
        row = c.execute("SELECT delay_s, priorities FROM queues WHERE name=?", (queue,)).fetchone()
        default_delay = row[0] if row else 0.0
        self._insert_messages(c, [(queue, mid, body, attrs, now + (delay or default_delay), now, prio)
                                  for mid, body, attrs, delay, prio in encoded])
        self._note_priorities(c, queue, row[1] if row else None, mask)

    def _note_priorities(self, c: Conn, queue: str, known: int | None, mask: int) -> None:
        """Record the priorities ``mask`` sent to ``queue`` (``known``: the queue's mask, None
        when it has no row: sending creates the queue, as publishing to a fresh subscription
        does). A first message of a priority makes receives probe it from now on."""
        if known is None:
            c.execute("INSERT INTO queues(name, visibility_s, max_receives, priorities) VALUES (?,?,?,?) "
                      "ON CONFLICT DO NOTHING", (queue, 30.0, 5, mask))
        elif mask & ~known:
            c.execute("UPDATE queues SET priorities = priorities | ? WHERE name=?", (mask, queue))

    def _insert_messages(self, c: Conn, rows: list[tuple[Any, ...]]) -> None:
        """(queue, message_id, body, attrs, visible_at, enqueued_at, priority) rows, in order.
        DO NOTHING: a message already waiting under the same id is not enqueued twice, so an
        outbox replay does not double the queue."""
        c.executemany("INSERT INTO messages(queue, message_id, body, attrs, visible_at, enqueued_at, priority) "
                      "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", rows)

    def receive(self, queue: str, *, max_messages: int, wait_s: float, visibility_s: float) -> list[Delivery]:
        got = self._claim(queue, max_messages, visibility_s)
        if got or wait_s <= 0:
            return got
        deadline = self.clock.now() + wait_s
        while not got and self.clock.now() < deadline:
            self._wait(queue, deadline)
            got = self._claim(queue, max_messages, visibility_s)
        return got

    def _claim(self, queue: str, max_messages: int, visibility_s: float) -> list[Delivery]:
        now = self.clock.now()
        token = new_receipt()
        # Cheap check outside a write transaction: an idle worker must not hold the write lock.
        prios = PRIORITIES
        if not self.single_statement_claims:
            mask, ready = self.db.read(_ANY_READY, (queue, queue, now))[0]
            if not ready:
                return []
            if mask is not None:  # only the priorities this queue was ever sent
                prios = tuple(p for p in PRIORITIES if mask >> p & 1)

        def tx(c: Conn) -> list[Any]:
            return list(c.execute(
                "UPDATE messages SET receive_count=receive_count+1, receipt=seq || ':' || ?, leased=1, "
                f"visible_at=?, first_received_at=COALESCE(first_received_at, ?) WHERE seq IN ({self._ready_sql(prios)}) "
                f"RETURNING seq, message_id, {self.body_column}, attrs, receive_count, receipt, first_received_at, "
                "priority",
                (token, now + visibility_s, now, *self._ready_params(queue, now, max_messages, prios)),
            ).fetchall())

        # The deliveries are built after the transaction: on SQLite the write lock is the
        # resource every process of every stage queues for, so it covers the statement only.
        rows = self.db.run(tx, begin=not self.single_statement_claims)
        rows.sort(key=lambda r: (-r[7], r[0]))  # the batch in the order it was chosen
        return [
            # (positional: a dataclass built with keywords costs twice as much, per message)
            Delivery(queue, _text(body), receipt, rc, fr, mid, _attrs_in(attrs))
            for _seq, mid, body, attrs, rc, receipt, fr, _prio in rows
        ]

    def _ready_sql(self, prios: tuple[int, ...] = PRIORITIES) -> str:
        """The seqs of the first ready rows of a queue among priorities ``prios`` (highest
        first): highest priority first, then the oldest visible (parameters: ``_ready_params``)."""
        return _ready_select(prios)

    def _ready_params(self, queue: str, now: float, limit: int, prios: tuple[int, ...] = PRIORITIES
                      ) -> tuple[Any, ...]:
        return (*(queue, now, limit) * len(prios), limit) if len(prios) > 1 else (queue, now, limit)

    def ack(self, delivery: Delivery) -> bool:
        seq, _ = _split(delivery.receipt)
        return bool(self.db.run(
            lambda c: c.execute("DELETE FROM messages WHERE seq=? AND receipt=?", (seq, delivery.receipt)).rowcount
        ))

    def ack_batch(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        seqs = [_split(d.receipt)[0] for d in deliveries]
        receipts = [d.receipt for d in deliveries]
        # One statement for the batch; the receipt (unique: it embeds the seq) is the fence.
        rows = self.db.run(lambda c: c.execute(
            f"DELETE FROM messages WHERE seq IN ({','.join('?' * len(seqs))}) "
            f"AND receipt IN ({','.join('?' * len(receipts))}) RETURNING receipt", (*seqs, *receipts)).fetchall())
        gone = {r[0] for r in rows}
        return [d.receipt in gone for d in deliveries]

    def extend(self, delivery: Delivery, seconds: float) -> None:
        seq, _ = _split(delivery.receipt)
        now = self.clock.now()
        n = self.db.run(
            lambda c: c.execute(
                "UPDATE messages SET visible_at=? WHERE seq=? AND receipt=? AND visible_at>?",
                (now + seconds, seq, delivery.receipt, now),
            ).rowcount
        )
        if n == 0:
            raise LeaseLostError(f"lease on {delivery.message_id} in {delivery.queue} lost")

    def release(self, delivery: Delivery, delay_s: float) -> bool:
        seq, _ = _split(delivery.receipt)
        at = self.clock.now() + min(delay_s, self.max_delay_s)
        return bool(self.db.run(
            lambda c: c.execute(
                "UPDATE messages SET visible_at=?, leased=0, receipt=NULL WHERE seq=? AND receipt=?",
                (at, seq, delivery.receipt),
            ).rowcount
        ))

    def snooze(self, delivery: Delivery, delay_s: float) -> bool:
        seq, _ = _split(delivery.receipt)
        at = self.clock.now() + delay_s
        # receive_count-1: the claim counted this receive; a snooze takes it back
        return bool(self.db.run(
            lambda c: c.execute(
                "UPDATE messages SET visible_at=?, leased=0, receipt=NULL, receive_count=receive_count-1 "
                "WHERE seq=? AND receipt=?", (at, seq, delivery.receipt),
            ).rowcount
        ))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        seq, _ = _split(delivery.receipt)

        def tx(c: Conn) -> None:
            gone = c.execute("DELETE FROM messages WHERE seq=? AND receipt=?", (seq, delivery.receipt)).rowcount
            if not gone:  # stale receipt: someone else holds it, or it was moved already
                return
            row = c.execute("SELECT dead_letter FROM queues WHERE name=?", (delivery.queue,)).fetchone()
            dlq = (row[0] if row else None) or default_dead_letter(delivery.queue)
            body, cut = dead_letter_body(delivery.body, self.max_body_bytes)
            attrs = dict(delivery.attributes, **cut, **{DEAD_LETTER_REASON: reason, "source_queue": delivery.queue})
            self.send(dlq, Outgoing(body=body, message_id=delivery.message_id, attributes=attrs))

        self.db.run(tx)

    def depth(self, queue: str) -> QueueDepth:
        now = self.clock.now()
        rows = self.db.read(
            "SELECT COALESCE(SUM(CASE WHEN visible_at<=? THEN 1 ELSE 0 END),0), "
            "COALESCE(SUM(CASE WHEN visible_at>? AND leased=1 THEN 1 ELSE 0 END),0), "
            "COALESCE(SUM(CASE WHEN visible_at>? AND leased=0 THEN 1 ELSE 0 END),0) FROM messages WHERE queue=?",
            (now, now, now, queue),
        )
        vis, infl, delayed = rows[0]
        return QueueDepth(visible=int(vis), in_flight=int(infl), delayed=int(delayed))

    def next_visible_at(self, queue: str) -> float | None:
        """When the earliest message of ``queue`` is (or was) ready; None when it is empty."""
        rows = self.db.read("SELECT MIN(v) FROM (" + _per_priority(
            "SELECT MIN(visible_at) AS v FROM messages WHERE queue=? AND priority={p}") + ") AS firsts",
            (queue,) * len(PRIORITIES))
        return None if rows[0][0] is None else float(rows[0][0])

    def queues(self) -> list[str]:
        rows = self.db.read("SELECT name FROM queues UNION SELECT DISTINCT queue FROM messages ORDER BY 1")
        return [r[0] for r in rows]

    def purge(self, queue: str) -> None:
        self.db.run(lambda c: c.execute("DELETE FROM messages WHERE queue=?", (queue,)) and None)

    def peek(self, queue: str, limit: int) -> list[Delivery]:
        rows = self.db.read(
            f"SELECT message_id, {self.body_column}, attrs, receive_count, first_received_at FROM messages "
            "WHERE queue=? ORDER BY seq LIMIT ?", (queue, limit),
        )
        return [Delivery(queue=queue, body=_text(b), receipt="", receive_count=rc, first_received_at=fr or 0.0,
                         message_id=mid, attributes=json.loads(a)) for mid, b, a, rc, fr in rows]


@functools.cache
def _ready_select(prios: tuple[int, ...]) -> str:
    one = ("SELECT seq{pr} FROM messages WHERE queue=? AND priority={p} AND visible_at<=? "
           "ORDER BY visible_at, seq LIMIT ?")
    if len(prios) == 1:  # the common queue: one probe, no union
        return one.format(pr="", p=prios[0])
    return ("SELECT seq FROM (" + _per_priority(one.format(pr=", {p} AS pr, visible_at", p="{p}"), prios)
            + ") AS ready ORDER BY pr DESC, visible_at, seq LIMIT ?")


#: the priorities a queue was ever sent (a bit each; NULL: unknown), and whether any of its rows
#: is ready (one index probe per priority)
_ANY_READY = ("SELECT (SELECT priorities FROM queues WHERE name=?), EXISTS(SELECT 1 FROM messages WHERE queue=? "
              "AND priority IN ({}) AND visible_at<=?)".format(",".join(map(str, PRIORITIES))))


class SqlTopic:
    def __init__(self, transport: SqlTransport) -> None:
        self.transport = transport
        self.db = transport.db

    def ensure_topic(self, topic: str) -> None:
        self.db.run(lambda c: c.execute("INSERT INTO topics(name) VALUES (?) ON CONFLICT DO NOTHING", (topic,)) and None)

    def subscribe(self, topic: str, queue: str, *, raw: bool = True) -> None:
        def tx(c: Conn) -> None:
            c.execute("INSERT INTO topics(name) VALUES (?) ON CONFLICT DO NOTHING", (topic,))
            c.execute("INSERT INTO subscriptions(topic, queue, raw) VALUES (?,?,?) "
                      "ON CONFLICT(topic, queue) DO UPDATE SET raw=excluded.raw", (topic, queue, int(raw)))

        self.db.run(tx)

    def topics(self) -> list[str]:
        return [r[0] for r in self.db.read("SELECT name FROM topics ORDER BY name")]

    def subscriptions(self, topic: str) -> list[tuple[str, bool]]:
        rows = self.db.read("SELECT queue, raw FROM subscriptions WHERE topic=? ORDER BY queue", (topic,))
        return [(q, bool(r)) for q, r in rows]

    def publish_batch(self, topic: str, messages: Sequence[Outgoing]) -> None:
        def tx(c: Conn) -> None:
            # Every copy of every message in one transaction: all or none.
            subs = self.subscriptions(topic)
            for m in messages:
                mid = m.message_id or new_receipt()
                for queue, raw in subs:
                    payload = m.body if raw else sns_wrap(topic, m.body, mid)
                    self.transport.send(queue, Outgoing(body=payload, message_id=mid, group_id=m.group_id,
                                                        delay_s=m.delay_s, priority=m.priority))

        self.db.run(tx)

    def publish(self, topic: str, body: str, *, message_id: str, group_id: str | None = None) -> None:
        self.publish_batch(topic, [Outgoing(body=body, message_id=message_id, group_id=group_id)])


_t: type[Transport] = SqlTransport
_p: type[Topic] = SqlTopic
