"""The begin of ``begin="deferred"`` (the default): written only for a round still running.

A first delivery's begin (the claim, and PENDING -> RUNNING) is written only if its round's
handlers are still running ``after_s`` after the round started: then one write begins every
delivery of the round whose handler has not finished, the one running included, so a slow
step shows RUNNING and is fenced by its claim from then on. A round that finishes sooner writes
no begin: its commit records the step (first committer wins), which spares the fast path one
job-row write per message. A redelivery (receive count above one) is begun before its handler
runs, as ``begin="eager"`` does: it follows a crash, a lost lease or a retry, and its attempt
goes on the record.

The write runs on the clock's timer (the timer thread, or inside ``SimClock.advance``) while
the handler's thread runs handlers; a lock makes the two take turns. Whatever the write raised
(a simulated crash, say; the controller's write lets an outage pass as no begin) is raised
again in the handler's thread, which abandons the round as a crash there would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from orchestrator.clock import Cancel, Clock

T = TypeVar("T")


class DeferredBegin(Generic[T]):
    def __init__(self, clock: Clock, after_s: float, items: Sequence[T],
                 write: Callable[[list[T], float], None]) -> None:
        #: when the round started: the begun steps' start
        self.started_at = clock.now()
        # the items whose handler has not finished, in order (by identity: items need not hash)
        self._pending: dict[int, T] = {id(it): it for it in items}
        self._write = write
        self._over = False  # written or closed: nothing more to write
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._timer: Cancel | None = None
        self._timer = clock.every(after_s, self._fire)

    def _fire(self) -> None:
        if self._timer is not None:  # (None: it fired before ``every`` returned it)
            self._timer.cancel()  # once
        with self._lock:
            if self._over:
                return
            self._over = True
            try:
                if self._pending:
                    self._write(list(self._pending.values()), self.started_at)
            except BaseException as exc:  # raised again in the handler's thread
                self._failure = exc

    def finished(self, item: T) -> None:
        """``item``'s handler returned (or will not run): a later write leaves it out. Waits
        for a write under way, and raises what it raised."""
        with self._lock:
            self._pending.pop(id(item), None)
            self._raise()

    def close(self) -> None:
        """No write from now on (waits for one under way); raises what a write raised."""
        self._stop_timer()
        with self._lock:
            self._over = True
            self._raise()

    def cancel(self) -> None:
        """No write from now on (waits for one under way), whatever it raised: the round is
        being abandoned already."""
        self._stop_timer()
        with self._lock:
            self._over = True
            self._failure = None

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _raise(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
