"""SIGTERM and SIGINT as a stop request, with a handler that takes no lock.

A Python signal handler runs in the main thread, between two of its bytecodes. A handler that
takes a lock the main thread holds at that moment waits for its own thread forever: one that
set a ``threading.Event`` did, when the signal landed while the main thread was on its way
into or out of that Event's ``wait`` (which holds the Event's lock for a few bytecodes), and
the process then outlived every grace period. So a stop request is a plain flag that the
polling loops read (``Worker.request_stop``, ``Supervisor.request_stop``), and the loop, not
the handler, wakes whatever sleeps.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(request_stop: Callable[[], None]) -> None:
    """Call ``request_stop`` on SIGTERM or SIGINT; it must take no lock. From the main thread."""
    def handler(_signum: int, _frame: object) -> None:
        request_stop()

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
