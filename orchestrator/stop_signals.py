"""SIGTERM and SIGINT as a stop request that a polling loop acts on.

A Python signal handler runs in the main thread, between two of its bytecodes. A handler that
sets a ``threading.Event`` takes that Event's lock; if the main thread held it at that moment
(it does, briefly, on the way into and out of its own ``Event.wait``), the handler waits for
itself forever and the process never stops. So the handler here only notes the signal, a plain
assignment, and the loop that polls anyway sets the Event, outside the handler.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """The stop signal received, if any; ``install`` from the main thread."""

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.received = signum
