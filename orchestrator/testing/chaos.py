"""Seeded chaos around any real backend, for staging runs and tests.

``chaos_backend(backend, seed=..., duplicate=0.05, ...)`` wraps the transport and the status
store: deliveries are duplicated, delayed or reordered; ``extend`` fails; store writes fail
before they apply, or apply and then report failure (the reply was lost). Every injected
failure raises ``InjectedFault``, which a worker treats like a crash of that batch: the
in-memory state is dropped and the queue redelivers.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Sequence
from typing import Any

from orchestrator.backends import Backend
from orchestrator.base import Delivery, Outgoing, QueueDepth, QueueSpec, StatusStore, Transport
from orchestrator.errors import SimulatedCrash

STORE_WRITES = ("create", "fail", "retried", "note", "delete", "snooze", "cancel", "retry", "reset",
                "update_fields", "create_doc", "create_docs", "begin_docs", "commit_docs", "apply")


class InjectedFault(SimulatedCrash):
    """A failure injected by a chaos wrapper."""


@dataclasses.dataclass
class ChaosOdds:
    duplicate: float = 0.0  # a received message is delivered again later (as SQS may)
    delay: float = 0.0  # a sent message is delayed by up to max_delay_s
    max_delay_s: float = 5.0
    reorder: bool = False  # a received batch is shuffled
    fail_extend: float = 0.0  # a heartbeat extension fails (transiently)
    fail_writes: float = 0.0  # a store write fails before it applies
    lose_replies: float = 0.0  # a store write applies, then reports failure


class _Rng:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def hit(self, p: float) -> bool:
        if p <= 0:
            return False
        with self._lock:
            return self._rng.random() < p

    def uniform(self, a: float, b: float) -> float:
        with self._lock:
            return self._rng.uniform(a, b)

    def shuffle(self, items: list[Any]) -> None:
        with self._lock:
            self._rng.shuffle(items)


class ChaosTransport:
    def __init__(self, inner: Transport, odds: ChaosOdds, rng: _Rng) -> None:
        self.inner, self.odds, self.rng = inner, odds, rng
        self.max_delay_s = inner.max_delay_s
        self.max_visibility_s = inner.max_visibility_s
        self.max_batch = inner.max_batch
        self.max_body_bytes = inner.max_body_bytes
        self.injected: dict[str, int] = {"duplicate": 0, "delay": 0, "fail_extend": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _maybe_delay(self, m: Outgoing) -> Outgoing:
        if self.rng.hit(self.odds.delay):
            self.injected["delay"] += 1
            return dataclasses.replace(m, delay_s=m.delay_s + self.rng.uniform(0, self.odds.max_delay_s))
        return m

    def send(self, queue: str, message: Outgoing) -> str:
        return self.inner.send(queue, self._maybe_delay(message))

    def send_batch(self, queue: str, messages: Sequence[Outgoing]) -> list[str]:
        return self.inner.send_batch(queue, [self._maybe_delay(m) for m in messages])

    def receive(self, queue: str, *, max_messages: int, wait_s: float, visibility_s: float) -> list[Delivery]:
        got = self.inner.receive(queue, max_messages=max_messages, wait_s=wait_s, visibility_s=visibility_s)
        if self.odds.reorder:
            self.rng.shuffle(got)
        for d in got:
            if self.rng.hit(self.odds.duplicate):
                self.injected["duplicate"] += 1
                copy = f"{d.message_id}-dup{self.injected['duplicate']}"
                self.inner.send(queue, Outgoing(body=d.body, message_id=copy, attributes=dict(d.attributes)))
        return got

    def extend(self, delivery: Delivery, seconds: float) -> None:
        if self.rng.hit(self.odds.fail_extend):
            self.injected["fail_extend"] += 1
            raise InjectedFault("extend")
        self.inner.extend(delivery, seconds)

    # explicit pass-throughs keep the Transport protocol visible to type checkers
    def ensure_queue(self, spec: QueueSpec) -> None:
        self.inner.ensure_queue(spec)

    def ack(self, delivery: Delivery) -> bool:
        return self.inner.ack(delivery)

    def ack_batch(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self.inner.ack_batch(deliveries)

    def release(self, delivery: Delivery, delay_s: float) -> bool:
        return self.inner.release(delivery, delay_s)

    def snooze(self, delivery: Delivery, delay_s: float) -> bool:
        return self.inner.snooze(delivery, delay_s)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.inner.dead_letter(delivery, reason)

    def depth(self, queue: str) -> QueueDepth:
        return self.inner.depth(queue)

    def queues(self) -> list[str]:
        return self.inner.queues()

    def peek(self, queue: str, limit: int) -> list[Delivery]:
        return self.inner.peek(queue, limit)

    def spec(self, queue: str) -> QueueSpec | None:
        return self.inner.spec(queue)


class ChaosStore:
    def __init__(self, inner: StatusStore, odds: ChaosOdds, rng: _Rng) -> None:
        self.inner, self.odds, self.rng = inner, odds, rng
        self.injected: dict[str, int] = {"fail_writes": 0, "lose_replies": 0}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in STORE_WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            if self.rng.hit(self.odds.fail_writes):
                self.injected["fail_writes"] += 1
                raise InjectedFault(f"store {name} failed")
            result = attr(*args, **kwargs)
            if self.rng.hit(self.odds.lose_replies):
                self.injected["lose_replies"] += 1
                raise InjectedFault(f"store {name} applied, reply lost")
            return result

        return write


def chaos_backend(backend: Backend, *, seed: int = 0, odds: ChaosOdds | None = None, **kw: Any) -> Backend:
    """``backend`` with seeded chaos in its transport and status store."""
    o = odds or ChaosOdds(**kw)
    rng = _Rng(seed)
    transport = ChaosTransport(backend.transport, o, rng)
    # The topic keeps publishing through the real transport (its copies are plain sends).
    return dataclasses.replace(backend, transport=transport, store=ChaosStore(backend.store, o, rng))
