"""The visibility heartbeat: keep a message invisible while its handler runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import structlog

from orchestrator.base import Delivery, Transport
from orchestrator.clock import Cancel, Clock
from orchestrator.errors import LeaseLostError, SimulatedCrash
from orchestrator.logging import error_text

log = structlog.get_logger("orchestrator.lease")


class _Heartbeat:
    """One repeating timer beating for several leases (a received batch's), stopped when the
    last of them stops. A timer per message cost the embedded pipeline ~3% of its time in
    the timer thread's lock and heap, for beats that are due at the same moment anyway."""

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self.clock, self.interval_s = clock, interval_s
        self.leases: list[Lease] = []
        self.timer: Cancel | None = None
        self._live = 0
        self._lock = threading.Lock()

    def start(self, leases: list[Lease]) -> None:
        self.leases, self._live = leases, len(leases)
        if leases:
            self.timer = self.clock.every(self.interval_s, self._beat)

    def _beat(self) -> None:
        for lease in self.leases:
            lease._beat()

    def release(self, lease: Lease) -> None:
        # Under the lock: a lease may be stopped by its holder and by the timer thread (time
        # limit, lost) at once, and counting it twice would stop its batch-mates' beats.
        with self._lock:
            if not lease.active:
                return
            lease.active = False
            self._live -= 1
            last = self._live == 0
        if last:
            # Let go of the leases: a lease points at its heartbeat, so holding them back would
            # make a reference cycle per batch (deliveries, envelopes and all) that only the
            # cyclic garbage collector frees (its passes were 11% of the in-memory pipeline).
            self.leases = []
            if self.timer is not None:
                self.timer.cancel()


class Lease:
    """Extends the delivery's lease every third of the visibility timeout.

    Stops extending once ``time_limit_s`` has passed since receipt, so a runaway handler's
    message is redelivered (and the runaway's result is then fenced off at commit). A failed
    extension that says the receipt is stale marks the lease ``lost``: the holder must not
    commit or emit. The leases of a batch (``Lease.batch``) share one timer.
    """

    def __init__(
        self,
        transport: Transport,
        delivery: Delivery,
        clock: Clock,
        visibility_s: float,  # (not keyword-only: ``batch`` makes one a message, positionally)
        time_limit_s: float | None = None,
        on_extend: Callable[[Delivery], None] | None = None,
        on_lost: Callable[[Delivery], None] | None = None,
        _heartbeat: _Heartbeat | None = None,
        _started: float | None = None,
    ) -> None:
        self.on_extend = on_extend
        self.on_lost = on_lost
        self.transport = transport
        self.delivery = delivery
        self.clock = clock
        self.visibility_s = visibility_s
        self.time_limit_s = time_limit_s
        self.started = clock.now() if _started is None else _started
        self.lost = False
        self.extensions = 0
        self.active = True  # still extending (not stopped)
        if _heartbeat is None:
            _heartbeat = _Heartbeat(clock, visibility_s / 3.0)
            _heartbeat.start([self])
        self._heartbeat = _heartbeat

    @classmethod
    def batch(cls, transport: Transport, deliveries: Sequence[Delivery], clock: Clock, *, visibility_s: float,
              time_limit_s: float | None = None, on_extend: Callable[[Delivery], None] | None = None,
              on_lost: Callable[[Delivery], None] | None = None) -> list[Lease]:
        """A lease per delivery, all beaten by one timer."""
        heartbeat = _Heartbeat(clock, visibility_s / 3.0)
        now = clock.now()  # (a clock read a batch: they were received together)
        leases = [cls(transport, d, clock, visibility_s, time_limit_s, on_extend, on_lost, heartbeat, now)
                  for d in deliveries]
        heartbeat.start(leases)
        return leases

    def _beat(self) -> None:
        if self.lost or not self.active:
            return
        if self.time_limit_s is not None and self.clock.now() - self.started >= self.time_limit_s:
            log.warning("time limit reached; lease left to lapse", message_id=self.delivery.message_id,
                        time_limit_s=self.time_limit_s)
            self.stop()
            return
        try:
            self.transport.extend(self.delivery, self.visibility_s)
            self.extensions += 1
            if self.on_extend is not None:
                self.on_extend(self.delivery)
        except LeaseLostError:
            self.lost = True
            self.stop()
            if self.on_lost is not None:
                self.on_lost(self.delivery)
        except (Exception, SimulatedCrash) as exc:  # a failed beat is retried at the next one, never fatal
            log.warning("lease extension failed", message_id=self.delivery.message_id, error=error_text(exc))

    def pause(self, paused: bool = True) -> None:
        """Simulate a stalled process (GC pause, partition): its heartbeat stops firing, for
        every lease of its batch. Only meaningful on ``SimClock`` timers."""
        timer = self._heartbeat.timer
        if timer is not None and hasattr(timer, "paused"):
            timer.paused = paused

    def stop(self) -> None:
        if self.active:  # (a lease stopped already needs no turn at the heartbeat's lock)
            self._heartbeat.release(self)
