"""The next batch, claimed inside the last unit of work of this one.

A worker that has committed a batch receives the next one at once. Where a unit of work is one
transaction (SQLite, PostgreSQL), that receive can be the transaction's last statement instead
of a transaction of its own: one COMMIT per batch instead of two, and on SQLite one turn at the
database's single write lock instead of two (each stage process of the embedded default asks
for that lock for much of its time).

Nothing changes for the messages: they are claimed as a receive claims them, with the stage's
visibility timeout, and handled right after. If the process dies before it gets to them, they
come back when that timeout lapses, as after a receive. A unit that rolls back takes the claim
with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.base import Delivery, Transport
from orchestrator.errors import TransactionConflict
from orchestrator.storable import described


@dataclass(slots=True)
class Prefetch:
    """A batch's wish for its successor: up to ``want()`` messages of ``queue`` (asked when
    the claim is made: the worker sizes the next batch by this one's handlers), asked once."""

    want: Callable[[], int] | None
    queue: str
    visibility_s: float
    should_stop: Callable[[], bool]

    def claim(self, transport: Transport) -> list[Delivery]:
        """Claim the next batch, inside the unit of work (the caller checks that it is one
        transaction). Asked once per batch: a unit run again, or a later sub-batch's unit,
        claims nothing. A failed claim raises ``TransactionConflict``, so the unit is run
        again without it: the commits it holds must not fail for the next batch's sake."""
        size, self.want = self.want, None
        if size is None or self.should_stop():
            return []
        want = size()
        if want <= 0:
            return []
        try:
            return transport.receive(self.queue, max_messages=want, wait_s=0, visibility_s=self.visibility_s)
        except Exception as exc:
            raise TransactionConflict(f"claiming the next batch failed, so the unit runs again without it: "
                                      f"{described(exc)}") from exc
