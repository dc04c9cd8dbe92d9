"""The visibility heartbeat: keep a message invisible while its handler runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from orchestrator.errors import LeaseLostError, SimulatedCrash

if TYPE_CHECKING:
    from orchestrator.base import Delivery, Transport
    from orchestrator.clock import Cancel, Clock

log = structlog.get_logger("orchestrator.lease")


class Lease:
    """Extends the delivery's lease every third of the visibility timeout.

    Stops extending once ``time_limit_s`` has passed since receipt, so a runaway handler's
    message is redelivered (and the runaway's result is then fenced off at commit). A failed
    extension that says the receipt is stale marks the lease ``lost``: the holder must not
    commit or emit.
    """

    def __init__(
        self,
        transport: Transport,
        delivery: Delivery,
        clock: Clock,
        *,
        visibility_s: float,
        time_limit_s: float | None = None,
        on_extend: Callable[[Delivery], None] | None = None,
        on_lost: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.on_extend = on_extend
        self.on_lost = on_lost
        self.transport = transport
        self.delivery = delivery
        self.clock = clock
        self.visibility_s = visibility_s
        self.time_limit_s = time_limit_s
        self.started = clock.now()
        self.lost = False
        self.extensions = 0
        self._timer: Cancel | None = clock.every(visibility_s / 3.0, self._beat)

    def _beat(self) -> None:
        if self.lost or self._timer is None:
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
            log.warning("lease extension failed", message_id=self.delivery.message_id, error=str(exc))

    def pause(self, paused: bool = True) -> None:
        """Simulate a stalled process (GC pause, partition): its heartbeat stops firing.
        Only meaningful on ``SimClock`` timers."""
        if self._timer is not None and hasattr(self._timer, "paused"):
            self._timer.paused = paused

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
