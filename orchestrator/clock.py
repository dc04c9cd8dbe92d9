"""Clocks: the system clock, and a simulated one that moves only when told.

``every(interval_s, fn)`` schedules a repeating callback (the visibility heartbeat). On the
system clock it runs on a daemon thread; on ``SimClock`` it fires inside ``advance``/``sleep``,
so simulated time passing in a handler extends leases deterministically.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar


class Cancel(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (float)."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def every(self, interval_s: float, fn: Callable[[], None]) -> Cancel:
        """Call ``fn`` every ``interval_s`` seconds until cancelled."""
        ...


_T = TypeVar("_T", bound="_Timer")


class _Timer:
    def __init__(self, interval_s: float, fn: Callable[[], None], owner: _Scheduler | SimClock) -> None:
        self.interval_s = interval_s
        self.fn: Callable[[], None] | None = fn
        self.cancelled = False
        self.owner = owner

    def cancel(self) -> None:
        # A cancelled timer stays in its heap until its due time comes round (a third of a
        # visibility timeout for a heartbeat): dropping ``fn`` there lets the lease, its
        # delivery and everything behind it go at once, rather than thousands of them per
        # second of throughput lingering for the garbage collector to walk.
        if not self.cancelled:
            self.cancelled = True
            self.fn = None
            self.owner.cancelled += 1


def _compacted(heap: list[tuple[float, int, _T]], cancelled: int) -> list[tuple[float, int, _T]] | None:
    """``heap`` without its cancelled timers, once they are most of it (None: leave it)."""
    if cancelled <= len(heap) // 2 + 64:
        return None
    out = [e for e in heap if not e[2].cancelled]
    heapq.heapify(out)
    return out


class _Scheduler:
    """One daemon thread runs every repeating timer of the process (heartbeats), instead of
    a thread per leased message. A slow callback delays the others, so callbacks must be
    short (an extend call is)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.cancelled = 0  # cancelled timers still in the heap (about: counted without the lock)

    def add(self, interval_s: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer(interval_s, fn, self)
        with self._cond:
            heap = _compacted(self._heap, self.cancelled)
            if heap is not None:
                self._heap, self.cancelled = heap, 0
            entry = (time.monotonic() + interval_s, next(self._seq), timer)
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="orchestrator-timers")
                self._thread.start()
            if self._heap[0] is entry:
                # Wake the timer thread only when its next deadline moved earlier: a batch's ten
                # leases would otherwise wake it ten times (a thread switch each) for nothing.
                self._cond.notify()
        return timer

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                due, _, timer = heapq.heappop(self._heap)
                fn = timer.fn
                if fn is None:
                    self.cancelled = max(0, self.cancelled - 1)
                    continue
                heapq.heappush(self._heap, (due + timer.interval_s, next(self._seq), timer))
            with contextlib.suppress(Exception):  # a failing timer must not stop the others
                fn()


_SCHEDULER = _Scheduler()


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def every(self, interval_s: float, fn: Callable[[], None]) -> Cancel:
        return _SCHEDULER.add(interval_s, fn)


#: how often a ``DatabaseClock`` re-reads the database's time (tracks drift of either clock)
RESYNC_S = 30.0


class DatabaseClock(SystemClock):
    """The database's time, for visibility and delays, without a query per reading.

    Every process that shares a queue must agree on "now": a worker whose own clock runs two
    minutes fast would otherwise make every message it sends (or releases) invisible to the
    others for two minutes. This clock reads the database's time once per ``RESYNC_S`` and
    runs on the local monotonic clock in between (immune to the local wall clock being set
    or stepped). A failed read keeps the last offset; before any read it falls back to the
    local clock.
    """

    def __init__(self, read_db_time: Callable[[], float], *, resync_s: float = RESYNC_S) -> None:
        self._read = read_db_time
        self.resync_s = resync_s
        self._base: float | None = None  # database time minus monotonic time
        self._synced_at = float("-inf")
        self._lock = threading.Lock()

    def _sync(self) -> None:
        t0 = time.monotonic()
        try:
            db_now = float(self._read())
        except Exception:  # the database is away: keep the offset we have
            self._synced_at = t0 - self.resync_s + 1.0  # try again in a second
            return
        t1 = time.monotonic()
        self._base = db_now - (t0 + t1) / 2  # the read happened, at best guess, mid-round-trip
        self._synced_at = t1

    def now(self) -> float:
        mono = time.monotonic()
        if mono - self._synced_at >= self.resync_s:
            with self._lock:
                if mono - self._synced_at >= self.resync_s:
                    self._sync()
        base = self._base
        return time.time() if base is None else time.monotonic() + base


class _SimTimer(_Timer):
    def __init__(self, clock: SimClock, interval_s: float, fn: Callable[[], None]) -> None:
        super().__init__(interval_s, fn, clock)
        self.paused = False  # a stalled process: its timers do not fire


class SimClock:
    """Simulated time. Starts at ``start`` and advances only through ``advance``/``sleep``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _SimTimer]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self.cancelled = 0  # cancelled timers still in the heap

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def every(self, interval_s: float, fn: Callable[[], None]) -> _SimTimer:
        timer = _SimTimer(self, interval_s, fn)
        with self._lock:
            heap = _compacted(self._heap, self.cancelled)
            if heap is not None:
                self._heap, self.cancelled = heap, 0
            heapq.heappush(self._heap, (self._now + interval_s, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in time order."""
        target = self._now + max(0.0, seconds)
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > target:
                    break
                due, _, timer = heapq.heappop(self._heap)
                self._now = max(self._now, due)
                fn = timer.fn
                if fn is None:
                    self.cancelled = max(0, self.cancelled - 1)
                    continue
                heapq.heappush(self._heap, (due + timer.interval_s, next(self._seq), timer))
            if not timer.paused:
                fn()
        self._now = target
