"""In-memory transport and topic. Real SQS semantics on a (possibly simulated) clock.

With a ``SimClock`` nothing blocks: ``receive`` returns at once and leases expire when the
test advances the clock. With the system clock, ``receive`` waits on a condition variable.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.base import Delivery, Outgoing, QueueDepth, QueueSpec, Topic, Transport, default_dead_letter
from orchestrator.clock import Clock, SimClock, SystemClock
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


@dataclass
class _Msg:
    seq: int
    message_id: str
    body: str
    attributes: dict[str, str]
    visible_at: float
    receive_count: int = 0
    receipt: str | None = None
    leased: bool = False
    first_received_at: float = 0.0
    priority: int = 0


@dataclass
class _Queue:
    """Messages by sequence number and by id; a heap of (visible_at, seq) entries for the
    messages not yet visible, and a heap of (-priority, visible_at, seq) for those that are.

    Every change of a message's ``visible_at`` pushes a new entry; an entry whose time no
    longer matches its message (or whose message is gone) is stale and skipped when it
    surfaces. Receive, send, ack, extend and release are O(log n), not a scan of the queue."""

    spec: QueueSpec
    messages: dict[int, _Msg] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    heap: list[tuple[float, int]] = field(default_factory=list)
    ready: list[tuple[int, float, int]] = field(default_factory=list)

    def schedule(self, m: _Msg, at: float) -> None:
        m.visible_at = at
        heapq.heappush(self.heap, (at, m.seq))
        if len(self.heap) > 2 * len(self.messages) + 64:  # drop stale entries now and then
            self.heap = [(m.visible_at, m.seq) for m in self.messages.values()]
            heapq.heapify(self.heap)
            self.ready = [e for e in self.ready if self._valid(e[1], e[2])]
            heapq.heapify(self.ready)

    def _valid(self, at: float, seq: int) -> _Msg | None:
        m = self.messages.get(seq)
        return m if m is not None and m.visible_at == at else None

    def add(self, m: _Msg, now: float) -> None:
        self.messages[m.seq] = m
        self.by_id[m.message_id] = m.seq
        if m.visible_at <= now:  # visible at once (most sends): ready now, without a trip through ``heap``
            heapq.heappush(self.ready, (-m.priority, m.visible_at, m.seq))
        else:
            self.schedule(m, m.visible_at)

    def remove(self, m: _Msg) -> None:
        del self.messages[m.seq]
        if self.by_id.get(m.message_id) == m.seq:
            del self.by_id[m.message_id]

    def next_visible(self) -> _Msg | None:
        """The message that becomes visible first (stale heap entries are dropped)."""
        while self.heap:
            at, seq = self.heap[0]
            m = self._valid(at, seq)
            if m is not None:
                return m
            heapq.heappop(self.heap)
        return None

    def next_ready(self, now: float) -> _Msg | None:
        """The visible message to hand out next: highest priority, then oldest visible."""
        while (m := self.next_visible()) is not None and m.visible_at <= now:
            heapq.heappop(self.heap)
            heapq.heappush(self.ready, (-m.priority, m.visible_at, m.seq))
        while self.ready:
            _, at, seq = self.ready[0]
            m = self._valid(at, seq)
            if m is not None:  # leased or not: a lapsed lease makes a message visible again
                return m
            heapq.heappop(self.ready)
        return None

    def earliest(self) -> _Msg | None:
        """The message visible first, ready ones included (simulation support)."""
        ready = self.next_ready(float("-inf"))  # moves nothing: just drops stale ready entries
        later = self.next_visible()
        if ready is None or (later is not None and later.visible_at < ready.visible_at):
            return later
        return ready

    def clear(self) -> None:
        self.messages.clear()
        self.by_id.clear()
        self.heap.clear()
        self.ready.clear()


class MemoryTransport:
    max_delay_s = DEFAULT_MAX_DELAY_S
    max_visibility_s = DEFAULT_MAX_VISIBILITY_S
    # as the embedded default's: a batch spreads the controller's per-batch work (the job
    # lookup, the commit's preparation, one send and one ack) over up to this many messages
    max_batch = DEFAULT_MAX_BATCH
    max_body_bytes = MAX_BODY_BYTES

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count(1)
        self._cond = threading.Condition()

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:  # like the embedded SQLite backend: sending creates the queue
            q = self._queues[name] = _Queue(QueueSpec(name))
        return q

    def ensure_queue(self, spec: QueueSpec) -> None:
        with self._cond:
            q = self._queues.get(spec.name)
            if q is None:
                self._queues[spec.name] = _Queue(spec)
            else:
                q.spec = spec
            if spec.dead_letter:
                self._queue(spec.dead_letter)

    def spec(self, queue: str) -> QueueSpec | None:
        q = self._queues.get(queue)
        return q.spec if q else None

    def send(self, queue: str, message: Outgoing) -> str:
        return self.send_batch(queue, [message])[0]

    def send_batch(self, queue: str, messages: Sequence[Outgoing]) -> list[str]:
        for m in messages:
            check_size(m.body, self.max_body_bytes)
        ids = []
        with self._cond:
            q = self._queue(queue)
            now = self.clock.now()
            for m in messages:
                mid = m.message_id or new_receipt()
                ids.append(mid)
                # A message already waiting under this id is not enqueued twice (re-emit).
                if m.message_id and mid in q.by_id:
                    continue
                seq = next(self._seq)
                # any delay: a queue held in memory has no cap to chain around
                delay = m.delay_s or q.spec.delay_s
                q.add(_Msg(seq, mid, m.body, dict(m.attributes), now + delay, priority=m.priority), now)
            self._cond.notify_all()
        return ids

    def receive(self, queue: str, *, max_messages: int, wait_s: float, visibility_s: float) -> list[Delivery]:
        with self._cond:
            got = self._claim(queue, max_messages, visibility_s)
            if got or wait_s <= 0 or isinstance(self.clock, SimClock):
                return got
            deadline = self.clock.now() + wait_s
            while not got:
                left = deadline - self.clock.now()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
                got = self._claim(queue, max_messages, visibility_s)
            return got

    def _claim(self, queue: str, max_messages: int, visibility_s: float) -> list[Delivery]:
        q = self._queue(queue)
        now = self.clock.now()
        out: list[Delivery] = []
        while len(out) < max_messages:
            m = q.next_ready(now)
            if m is None:
                break
            heapq.heappop(q.ready)  # its entry: the lease below makes it stale
            m.receive_count += 1
            m.receipt = new_receipt()
            m.leased = True
            q.schedule(m, now + visibility_s)
            if not m.first_received_at:
                m.first_received_at = now
            # (positional: a dataclass built with keywords costs twice as much, per message)
            out.append(Delivery(queue, m.body, f"{m.seq}:{m.receipt}", m.receive_count, m.first_received_at,
                                m.message_id, m.attributes))
        return out

    def _held(self, delivery: Delivery) -> _Msg | None:
        seq, _, receipt = delivery.receipt.partition(":")
        q = self._queues.get(delivery.queue)
        m = q.messages.get(int(seq)) if q else None
        return m if m is not None and m.receipt == receipt else None

    def ack(self, delivery: Delivery) -> bool:
        return self.ack_batch([delivery])[0]

    def ack_batch(self, deliveries: Sequence[Delivery]) -> list[bool]:
        out = []
        with self._cond:  # one lock and one wake-up for the batch
            for d in deliveries:
                m = self._held(d)
                if m is not None:
                    self._queues[d.queue].remove(m)
                out.append(m is not None)
            self._cond.notify_all()
        return out

    def extend(self, delivery: Delivery, seconds: float) -> None:
        with self._cond:
            m = self._held(delivery)
            now = self.clock.now()
            # A lease that already lapsed is lost even if nobody took the message yet: the
            # queue may hand it out any moment, so the holder must not rely on it.
            if m is None or m.visible_at <= now:
                raise LeaseLostError(f"lease on {delivery.message_id} in {delivery.queue} lost")
            self._queues[delivery.queue].schedule(m, now + seconds)

    def release(self, delivery: Delivery, delay_s: float) -> bool:
        with self._cond:
            m = self._held(delivery)
            if m is None:
                return False
            self._queues[delivery.queue].schedule(m, self.clock.now() + min(delay_s, self.max_delay_s))
            m.leased = False
            m.receipt = None
            self._cond.notify_all()
            return True

    def snooze(self, delivery: Delivery, delay_s: float) -> bool:
        with self._cond:
            m = self._held(delivery)
            if m is None:
                return False
            self._queues[delivery.queue].schedule(m, self.clock.now() + delay_s)
            m.leased = False
            m.receipt = None
            m.receive_count -= 1  # a snooze uses no attempt
            self._cond.notify_all()
            return True

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._cond:
            spec = self._queue(delivery.queue).spec
            dlq = spec.dead_letter or default_dead_letter(delivery.queue)
            m = self._held(delivery)
            if m is None:  # stale receipt: someone else holds it, or it was moved already
                return
            self._queues[delivery.queue].remove(m)
        body, cut = dead_letter_body(delivery.body, self.max_body_bytes)
        attrs = dict(delivery.attributes, **cut)
        attrs[DEAD_LETTER_REASON] = reason
        attrs["source_queue"] = delivery.queue
        self.send(dlq, Outgoing(body=body, message_id=delivery.message_id, attributes=attrs))

    def depth(self, queue: str) -> QueueDepth:
        with self._cond:
            now = self.clock.now()
            msgs = list(self._queue(queue).messages.values())
        vis = sum(1 for m in msgs if m.visible_at <= now)
        infl = sum(1 for m in msgs if m.visible_at > now and m.leased)
        return QueueDepth(visible=vis, in_flight=infl, delayed=len(msgs) - vis - infl)

    def queues(self) -> list[str]:
        return sorted(self._queues)

    def purge(self, queue: str) -> None:
        with self._cond:
            self._queue(queue).clear()

    def next_visible_at(self, queue: str) -> float | None:
        """When the next message of ``queue`` becomes visible (simulation support)."""
        with self._cond:
            m = self._queue(queue).earliest()
            return m.visible_at if m is not None else None

    def peek(self, queue: str, limit: int) -> list[Delivery]:
        with self._cond:
            msgs = sorted(self._queue(queue).messages.values(), key=lambda m: m.seq)[:limit]
            return [Delivery(queue=queue, body=m.body, receipt="", receive_count=m.receive_count,
                             first_received_at=m.first_received_at, message_id=m.message_id,
                             attributes=dict(m.attributes)) for m in msgs]


class MemoryTopic:
    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self._subs: dict[str, dict[str, bool]] = {}

    def ensure_topic(self, topic: str) -> None:
        self._subs.setdefault(topic, {})

    def subscribe(self, topic: str, queue: str, *, raw: bool = True) -> None:
        self._subs.setdefault(topic, {})[queue] = raw

    def subscriptions(self, topic: str) -> list[tuple[str, bool]]:
        return sorted(self._subs.get(topic, {}).items())

    def topics(self) -> list[str]:
        return sorted(self._subs)

    def publish_batch(self, topic: str, messages: Sequence[Outgoing]) -> None:
        for m in messages:
            mid = m.message_id or new_receipt()
            for queue, raw in self.subscriptions(topic):
                payload = m.body if raw else sns_wrap(topic, m.body, mid)
                self.transport.send(queue, Outgoing(body=payload, message_id=mid, group_id=m.group_id,
                                                    delay_s=m.delay_s, priority=m.priority))

    def publish(self, topic: str, body: str, *, message_id: str, group_id: str | None = None) -> None:
        self.publish_batch(topic, [Outgoing(body=body, message_id=message_id, group_id=group_id)])


_t: type[Transport] = MemoryTransport
_p: type[Topic] = MemoryTopic
