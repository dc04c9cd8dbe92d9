"""The in-memory backend: queues, topics and jobs in this process, for tests (a simulated clock
in code); objects in a local directory when one is given."""

from __future__ import annotations

from pathlib import Path

from orchestrator.base import Backend
from orchestrator.clock import Clock, SystemClock
from orchestrator.objects.local import LocalObjectStore
from orchestrator.stores.memory import MemoryStatusStore
from orchestrator.transports.memory import MemoryTopic, MemoryTransport


def memory_backend(clock: Clock | None = None, *, objects_root: str | Path | None = None) -> Backend:
    clock = clock or SystemClock()
    transport = MemoryTransport(clock=clock)
    objects = LocalObjectStore(objects_root) if objects_root else None
    return Backend(transport=transport, topic=MemoryTopic(transport), store=MemoryStatusStore(clock=clock),
                   clock=clock, objects=objects, url="memory://")
