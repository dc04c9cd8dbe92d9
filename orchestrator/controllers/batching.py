"""How many messages a worker takes per receive.

A stage with ``batch_size`` set takes that many. Otherwise the worker sizes each receive to
the stage's pace: a batch's handlers should take about ``BATCH_TARGET_S`` in all. Only the
handlers count: a batch's round trips to the queue and the store cost about the same for one
message or a hundred, and counting them would shrink batches exactly where they pay (a
distant database, SQS). Fast handlers get the transport's largest batch (100 on SQLite,
PostgreSQL and in memory, 10 on SQS), which spreads a transaction's fixed cost over many
messages; slow handlers get batches of one, so a worker never holds queued messages another
worker could be running, and a crash delays only the message in hand. The first receive takes
one message; the size at most doubles from one batch to the next (a single fast batch cannot
grab the queue's head) and drops at once when the handlers slow down.
"""

from __future__ import annotations

#: the handling time a sized batch aims at, seconds
BATCH_TARGET_S = 0.1


class BatchSizer:
    def __init__(self, *, limit: int, fixed: int | None = None, target_s: float = BATCH_TARGET_S) -> None:
        self.limit = max(1, limit)
        self.fixed = fixed
        self.target_s = target_s
        self.size = fixed if fixed is not None else 1

    def record(self, count: int, seconds: float) -> None:
        """A batch of ``count`` messages spent ``seconds`` in its handlers: size the next one."""
        self.size = self.next_size(count, seconds)

    def next_size(self, count: int, seconds: float) -> int:
        """The size ``record(count, seconds)`` would set, without setting it (a batch's commit
        claims the next batch before the worker records the batch)."""
        if self.fixed is not None or count <= 0:
            return self.size
        per_message = seconds / count
        fits = int(self.target_s / per_message) if per_message > 0 else self.limit
        return max(1, min(self.limit, fits, 2 * self.size))
